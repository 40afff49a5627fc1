// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package apicheck

import (
	"fmt"
	"strings"
	"testing"
)

// importRule says that the packages matching from must not link any
// package matching one of never (prefixes of import paths; a d2c path is
// relative to the module).
type importRule struct {
	why    string
	from   []string
	except []string
	never  []string
}

var (
	mqtt     = []string{"transport", "github.com/eclipse/paho.golang", "github.com/mochi-mqtt/server"}
	cloudish = []string{"cloud", "github.com/jackc/pgx", "modernc.org/sqlite", "github.com/prometheus"}
)

// importRules are the one-way dependencies of docs/architecture.md.
var importRules = []importRule{
	{
		why:   "identity imports neither transport nor update",
		from:  []string{"identity"},
		never: append([]string{"update"}, mqtt...),
	},
	{
		why:   "update does not import transport: an update-only agent links no MQTT (updatelink, outside update/, wires the two)",
		from:  []string{"update"},
		never: mqtt,
	},
	{
		why:    "transport never imports update, and its core links no broker",
		from:   []string{"transport"},
		except: []string{"transport/devbroker", "transport/mochihook"},
		never:  []string{"update", "github.com/mochi-mqtt/server"},
	},
	{
		why:   "no device package links a database driver, Prometheus or the cloud service",
		from:  []string{"identity", "transport", "update", "updatelink"},
		never: cloudish,
	},
	{
		why:   "no library package imports cmd/ or examples/",
		from:  []string{"identity", "transport", "update", "cloud"},
		never: []string{"cmd", "examples", "bench"},
	},
}

// TestImportRules checks every rule over `go list -deps` of the module's
// packages (tests excluded: a test may wire anything).
func TestImportRules(t *testing.T) {
	pkgs := goList(t)
	checked := 0
	for _, rule := range importRules {
		for path, p := range pkgs {
			if p.Module == nil || p.Module.Path != modulePath {
				continue
			}
			rel := strings.TrimPrefix(strings.TrimPrefix(path, modulePath), "/")
			if !under(rel, rule.from) || under(rel, rule.except) {
				continue
			}
			checked++
			var bad []string
			for _, dep := range p.Deps {
				d := dep
				if d == modulePath || strings.HasPrefix(d, modulePath+"/") {
					d = strings.TrimPrefix(strings.TrimPrefix(d, modulePath), "/")
				}
				if under(d, rule.never) && !under(d, rule.except) {
					bad = append(bad, dep)
				}
			}
			if len(bad) > 0 {
				if len(bad) > 3 {
					bad = append(bad[:3], fmt.Sprintf("and %d more", len(bad)-3))
				}
				t.Errorf("%s links %s: %s", rel, strings.Join(bad, ", "), rule.why)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no package checked")
	}
}

// under reports whether path is one of prefixes or below one.
func under(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// TestTransportLayers checks the layering of docs/architecture.md inside
// transport: no subpackage links the transport root (the root is the happy
// path built on them, never below them), and wire, the lowest layer,
// links no other transport package but its internal helpers.
func TestTransportLayers(t *testing.T) {
	pkgs := goList(t)
	const root = modulePath + "/transport"
	checked := 0
	for path, p := range pkgs {
		if !strings.HasPrefix(path, root+"/") {
			continue
		}
		checked++
		for _, dep := range p.Deps {
			if dep == root {
				t.Errorf("%s links the transport root: subpackages sit below it", path)
			}
			if path == root+"/wire" && strings.HasPrefix(dep, root+"/") && !strings.HasPrefix(dep, root+"/internal/") {
				t.Errorf("transport/wire links %s: the wire format is the lowest layer", dep)
			}
		}
	}
	if checked < 8 {
		t.Fatalf("checked %d transport subpackages, want at least 8", checked)
	}
}
