// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package outbox

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/d2c-iot/d2c/transport/wire"
)

// obSeqMsg is a sequenced message of boot, seq at prio.
func obSeqMsg(boot, seq uint64, prio uint8) Message {
	m := obMsg("temp", fmt.Sprintf("%d/%d", boot, seq), prio)
	m.Boot, m.Seq = boot, seq
	return m
}

func obSeqs(msgs []Message) []uint64 {
	var out []uint64
	for _, m := range msgs {
		out = append(out, m.Seq)
	}
	return out
}

// TestOutboxSendWindow: a later message of higher priority never goes out
// more than the cloud's replay window ahead of the oldest queued one (the
// backlog would be refused as replays after the broker acknowledged it);
// within the window priority still orders delivery.
func TestOutboxSendWindow(t *testing.T) {
	dir := t.TempDir()
	o := obOpen(t, Config{Dir: dir})
	for s := range uint64(400) {
		obAppend(t, o, obSeqMsg(1, s, 0))
	}
	obAppend(t, o, obSeqMsg(1, 400, 10))

	got := obAll(o)
	if len(got) != sendWindow {
		t.Fatalf("Next returned %d messages, want the window of %d", len(got), sendWindow)
	}
	for i, m := range got {
		if m.Seq != uint64(i) || m.Boot != 1 {
			t.Fatalf("message %d is (boot %d, seq %d), want (1, %d): nothing beyond the window", i, m.Boot, m.Seq, i)
		}
	}

	// Acknowledge the 145 oldest: seq 400 is now within 256 of the
	// oldest queued (145), and its priority puts it first.
	var ids []uint64
	for _, m := range got[:145] {
		ids = append(ids, m.ID)
	}
	if err := o.Ack(ids...); err != nil {
		t.Fatal(err)
	}
	got = obAll(o)
	if len(got) != sendWindow || got[0].Seq != 400 || got[1].Seq != 145 || got[len(got)-1].Seq != 399 {
		t.Fatalf("after the acks Next gave %d messages, seqs %v..., want 400, then 145 to 399", len(got), obSeqs(got[:min(3, len(got))]))
	}

	// The pairs survive a reopen, and so does the window.
	obClose(t, o)
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	again := obAll(o)
	if !slices.Equal(obSeqs(again), obSeqs(got)) {
		t.Fatalf("after reopen Next gave %v, want %v", obSeqs(again), obSeqs(got))
	}
}

// TestOutboxSendWindowBoots: the messages of a later boot wait until every
// message of the earlier boots has gone, since the cloud keeps the window
// of the previous boot only.
func TestOutboxSendWindowBoots(t *testing.T) {
	o := obOpen(t, Config{Dir: t.TempDir()})
	defer obClose(t, o)
	key := obMsg("", "key delivery", 255) // not sequenced: always deliverable
	obAppend(t, o, key)
	old := obAppend(t, o, obSeqMsg(1, 7, 0), obSeqMsg(1, 8, 0))
	obAppend(t, o, obSeqMsg(2, 0, 200), obSeqMsg(3, 0, 255))

	got := obAll(o)
	if want := []string{"key delivery", "1/7", "1/8"}; !slices.Equal(obBodies(got), want) {
		t.Fatalf("Next gave %q, want %q", obBodies(got), want)
	}
	if err := o.Ack(old[0]); err != nil {
		t.Fatal(err)
	}
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"key delivery", "1/8"}) {
		t.Fatalf("boot 2 went before boot 1 was done: %q", got)
	}
	if err := o.Ack(old[1]); err != nil {
		t.Fatal(err)
	}
	if got := obBodies(obAll(o)); !slices.Equal(got, []string{"key delivery", "2/0"}) {
		t.Fatalf("after boot 1: %q, want boot 2 only", got)
	}
}

// TestOutboxOutOfSequence: Append refuses pairs that do not rise with the
// IDs (the window relies on ID order being sequence order), stores nothing
// of the refused call, and refuses a seq without a boot.
func TestOutboxOutOfSequence(t *testing.T) {
	dir := t.TempDir()
	o := obOpen(t, Config{Dir: dir})
	obAppend(t, o, obSeqMsg(2, 5, 0))
	for _, bad := range [][]Message{
		{obSeqMsg(2, 5, 0)},
		{obSeqMsg(2, 4, 0)},
		{obSeqMsg(1, 9, 0)},
		{obSeqMsg(2, 6, 0), obSeqMsg(2, 6, 0)},
		{{Topic: wire.TelemetryTopic("dev-1", "temp"), Payload: []byte("x"), Seq: 3}},
	} {
		if _, err := o.Append(t.Context(), bad...); !errors.Is(err, ErrOutOfSequence) {
			t.Fatalf("Append(%v): %v, want ErrOutOfSequence", obSeqs(bad), err)
		}
	}
	if n := o.Stats().Len; n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
	obClose(t, o)
	// The highest pair is found again at open.
	o = obOpen(t, Config{Dir: dir})
	defer obClose(t, o)
	if _, err := o.Append(t.Context(), obSeqMsg(2, 5, 0)); !errors.Is(err, ErrOutOfSequence) {
		t.Fatalf("after reopen: %v, want ErrOutOfSequence", err)
	}
	obAppend(t, o, obSeqMsg(3, 0, 0))
}
