// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package broker_test

import (
	"fmt"
	"strings"

	"github.com/d2c-iot/d2c/transport/broker"
	"github.com/d2c-iot/d2c/transport/wire"
)

func ExampleAuthorize() {
	services := []broker.ServiceRights{{Name: "verifier", Read: []string{wire.AllUp}}}
	// The username is the client certificate's CN.
	fmt.Println(broker.Authorize("dev-1", wire.TelemetryTopic("dev-1", "temp"), broker.AccessWrite, services))
	fmt.Println(broker.Authorize("dev-1", wire.TelemetryTopic("dev-2", "temp"), broker.AccessWrite, services))
	fmt.Println(broker.Authorize("dev-1", wire.CommandTopic("dev-1"), broker.AccessRead, services))
	fmt.Println(broker.Authorize("dev-1", "d2c/v1/dev/+/down/cmd", broker.AccessRead, services))
	fmt.Println(broker.Authorize("svc:verifier", "$share/verifiers/"+wire.AllUp, broker.AccessRead, services))
	// Output:
	// true
	// false
	// true
	// false
	// true
}

func ExampleMosquittoConfig() {
	c := broker.MosquittoConfig{
		Listen:   "0.0.0.0:8883",
		CAFile:   "/etc/mosquitto/d2c/ca.pem", // fleet root and issuing CA
		CertFile: "/etc/mosquitto/d2c/server.pem",
		KeyFile:  "/etc/mosquitto/d2c/server.key",
		CRLFile:  "/etc/mosquitto/d2c/crl.pem",
		ACLFile:  "/etc/mosquitto/d2c/acl",
		Services: []broker.ServiceRights{
			{Name: "verifier", Read: []string{wire.AllUp}},
			{Name: "commander", Read: []string{wire.AllCommandResults}, Write: []string{wire.TopicPrefix + "+/down/cmd"}},
		},
	}
	acl, err := c.ACL()
	if err != nil {
		fmt.Println(err)
		return
	}
	// Write c.Conf() to mosquitto.conf and acl to c.ACLFile. The rules,
	// without their comments:
	for _, line := range strings.Split(acl, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			fmt.Println(line)
		}
	}
	// Output:
	// pattern write d2c/v1/dev/%u/up/#
	// pattern read d2c/v1/dev/%u/down/#
	// user svc:verifier
	// topic read d2c/v1/dev/+/up/#
	// user svc:commander
	// topic read d2c/v1/dev/+/up/cmdres
	// topic write d2c/v1/dev/+/down/cmd
}
