// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package outbox

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// flushResult runs o.flush in the background.
func flushResult(ctx context.Context, o *Outbox) <-chan error {
	done := make(chan error, 1)
	go func() {
		n, err := o.Flush(ctx)
		if err == nil && n != 0 {
			err = errors.New("flush returned a count without an error")
		}
		done <- err
	}()
	return done
}

// notYet fails if done has a result within a short while.
func notYet(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("flush returned %v %s", err, what)
	case <-time.After(50 * time.Millisecond):
	}
}

func waitFlush(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("flush did not return")
		return nil
	}
}

// TestOutboxFlush: flush waits for the messages stored before it (each
// removal, whatever its kind, wakes it), not for those stored after it; it
// ends with ctx (naming the count) or with Close.
func TestOutboxFlush(t *testing.T) {
	o := obOpen(t, Config{Dir: filepath.Join(t.TempDir(), "ob")})
	defer obClose(t, o)

	if n, err := o.Flush(t.Context()); n != 0 || err != nil {
		t.Fatalf("flush of an empty outbox = %d, %v", n, err)
	}
	ids := obAppend(t, o, obMsg("a", "1", 0), obMsg("b", "2", 7), obMsg("c", "3", 0))
	done := flushResult(t.Context(), o)
	notYet(t, done, "with 3 messages stored")
	obAppend(t, o, obMsg("d", "4", 9)) // stored after the call: not waited for
	if err := o.Ack(ids[1]); err != nil {
		t.Fatal(err)
	}
	notYet(t, done, "with 2 messages stored before it")
	if err := o.Drop(ids[0], "test"); err != nil {
		t.Fatal(err)
	}
	notYet(t, done, "with 1 message stored before it")
	if _, err := o.PurgeStream("c"); err != nil {
		t.Fatal(err)
	}
	if err := waitFlush(t, done); err != nil {
		t.Fatalf("flush after every earlier message left: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if n, err := o.Flush(ctx); n != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("flush with one message never acknowledged = %d, %v; want 1, DeadlineExceeded", n, err)
	}

	done = flushResult(t.Context(), o)
	notYet(t, done, "before Close")
	go o.Close()
	if err := waitFlush(t, done); !errors.Is(err, ErrClosed) {
		t.Fatalf("flush across Close = %v, want ErrClosed", err)
	}
}

// TestOutboxFlushExpiry: a message that expires while nothing reads the
// outbox (the device offline) ends the wait at its expiry.
func TestOutboxFlushExpiry(t *testing.T) {
	o := obOpen(t, Config{Dir: filepath.Join(t.TempDir(), "ob")})
	defer obClose(t, o)
	m := obMsg("a", "1", 0)
	m.Expires = time.Now().Add(100 * time.Millisecond)
	obAppend(t, o, m)
	start := time.Now()
	if err := waitFlush(t, flushResult(t.Context(), o)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("flush returned after %v, before the message expired", took)
	}
	if st := o.Stats(); st.Expired != 1 || st.Len != 0 {
		t.Fatalf("stats after expiry: %+v", st)
	}
}
