package tpm

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d2c-iot/d2c/internal/testpeer"
)

// swtpm is a TPM 2.0 simulator process started by startSwtpm for one test,
// in the style of testpeer.Mosquitto: state in the test's temporary
// directory, listening on 127.0.0.1 only, killed by a t.Cleanup.
type swtpm struct {
	// Addr is the command socket, "127.0.0.1:<port>", for Config.Addr.
	Addr string

	out  *lockedBuffer
	mu   sync.Mutex
	stop func() // kills the process and waits for it; nil once stopped
}

// swtpmStartTimeout bounds the wait for the command socket to accept.
const swtpmStartTimeout = 10 * time.Second

// startSwtpm starts a fresh TPM (new state directory, so new seeds) and
// returns once its command socket accepts connections. A missing swtpm
// fails the test (testpeer.Require), never skips it.
func startSwtpm(t testing.TB) *swtpm {
	t.Helper()
	bin := testpeer.Require(t, "swtpm")
	state := t.TempDir()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port, ctrl := testpeer.FreePort(t), testpeer.FreePort(t)
		s := &swtpm{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), out: new(lockedBuffer)}
		args := []string{"socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrl),
			"--tpmstate", "dir=" + state,
			"--flags", "not-need-init,startup-clear",
		}
		err := s.start(bin, args)
		if err == nil {
			t.Cleanup(func() {
				s.Kill()
				if t.Failed() {
					t.Logf("swtpm output:\n%s", s.out.String())
				}
			})
			return s
		}
		if errors.Is(err, errPortTaken) && attempt < attempts {
			t.Logf("swtpm: port %d or %d was taken, retrying", port, ctrl)
			continue
		}
		t.Fatalf("swtpm %s: %v\noutput:\n%s", strings.Join(args, " "), err, s.out.String())
	}
}

var errPortTaken = errors.New("port already in use")

func (s *swtpm) start(bin string, args []string) error {
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
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-done
		})
	}
	deadline := time.Now().Add(swtpmStartTimeout)
	for {
		select {
		case <-done:
			if strings.Contains(s.out.String(), "in use") {
				return errPortTaken
			}
			return fmt.Errorf("exited before accepting connections: %v", waitErr)
		default:
		}
		// swtpm serves one connection at a time and goes back to accept
		// when this probe closes.
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("%s not accepting after %v: %v", s.Addr, swtpmStartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	s.stop = stop
	s.mu.Unlock()
	return nil
}

// Kill stops the simulator with SIGKILL, as a TPM that stops answering,
// and waits for it.
func (s *swtpm) Kill() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// openTest opens a keystore on sw with its key files in a fresh directory,
// closed by a t.Cleanup.
func openTest(t testing.TB, sw *swtpm) *Keystore {
	t.Helper()
	ks, err := Open(Config{Addr: sw.Addr, Dir: t.TempDir() + "/keys"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks
}
