// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package hwpeer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// swtpmStartTimeout bounds the wait for the command socket to accept.
const swtpmStartTimeout = 10 * time.Second

// SWTPM is a swtpm TPM 2.0 simulator process started by [StartSWTPM]: a
// fresh TPM (new state directory, so new seeds), manufactured and started
// up, serving TPM 2.0 commands on a TCP socket on 127.0.0.1.
type SWTPM struct {
	// Addr is the command socket, "127.0.0.1:<port>" (identity/tpm's
	// Config.Addr). swtpm serves one connection at a time.
	Addr string

	out  *Output
	dir  string
	mu   sync.Mutex
	kill func() // kills the process and waits for it; nil once killed
}

var errPortTaken = errors.New("port already in use")

// StartSWTPM starts swtpm with its state in a new temporary directory and
// returns once its command socket accepts connections (within 10 s). A
// port taken by another process in the meantime is retried on others.
// stop kills it and removes the directory.
func StartSWTPM() (s *SWTPM, stop func(), err error) {
	bin, err := LookTool("swtpm")
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "d2c-swtpm-")
	if err != nil {
		return nil, nil, fmt.Errorf("hwpeer: swtpm: %w", err)
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, nil, err
		}
		ctrl, err := freePort()
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, nil, err
		}
		s := &SWTPM{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), out: new(Output), dir: dir}
		args := []string{"socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrl),
			"--tpmstate", "dir=" + dir,
			"--flags", "not-need-init,startup-clear",
		}
		err = s.start(bin, args)
		if err == nil {
			return s, func() { s.Kill(); _ = os.RemoveAll(dir) }, nil
		}
		if errors.Is(err, errPortTaken) && attempt < attempts {
			continue
		}
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("hwpeer: swtpm %s: %w\noutput:\n%s", strings.Join(args, " "), err, s.Output())
	}
}

func (s *SWTPM) start(bin string, args []string) error {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	var once sync.Once
	kill := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-done
		})
	}
	// swtpm serves one connection at a time and goes back to accept when
	// the probe closes.
	if err := AwaitAccept(s.Addr, done, func() error { return waitErr }, swtpmStartTimeout); err != nil {
		if errors.Is(err, ErrExited) && strings.Contains(s.out.String(), "in use") {
			return errPortTaken
		}
		kill()
		return err
	}
	s.mu.Lock()
	s.kill = kill
	s.mu.Unlock()
	return nil
}

// Kill stops the simulator with SIGKILL, as a TPM that stops answering
// would, and waits for it. Its state directory stays until stop.
func (s *SWTPM) Kill() {
	s.mu.Lock()
	kill := s.kill
	s.kill = nil
	s.mu.Unlock()
	if kill != nil {
		kill()
	}
}

// Output returns what swtpm wrote to stdout and stderr so far.
func (s *SWTPM) Output() string { return s.out.String() }
