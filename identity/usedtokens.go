// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package identity

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/internal/atomicfile"
	"github.com/d2c-iot/d2c/internal/limits"
	"github.com/d2c-iot/d2c/internal/statefile"
)

// UsedTokens records enrollment token IDs so that each token works once.
// Consume must be atomic and durable: once it returns nil, every later call
// with the same jti, in this process or after a restart, returns an error
// wrapping [ErrTokenReused]. A fleet running several registrars implements
// it on a shared database; [FileUsedTokens] serves one registrar.
type UsedTokens interface {
	Consume(ctx context.Context, jti string, expiry time.Time) error
}

// FileUsedTokens is a [UsedTokens] kept in two files: a checksummed snapshot
// and an append-only journal beside it (path + ".journal"). Each use appends
// one checksummed record and fsyncs, so a use costs the same however many
// tokens are remembered. Opening the store, and every
// [usedTokensCompactEvery] records, folds the journal into a new snapshot
// (written atomically) and forgets expired tokens, which an expired token's
// refusal makes safe. A record torn by a crash mid-append was never
// acknowledged, and is dropped.
type FileUsedTokens struct {
	path string
	fsys atomicfile.FS
	now  func() time.Time
	snap *statefile.Codec
	rec  *statefile.Codec

	compactEvery int // records between compactions; tests lower it

	mu      sync.Mutex
	used    map[string]int64 // jti -> expiry, Unix seconds
	journal atomicfile.File  // nil until the first append after a compaction
	pending int              // records in the journal
	broken  bool             // an append failed: compact before the next
}

var _ UsedTokens = (*FileUsedTokens)(nil)

// usedTokensCompactEvery bounds the journal's length between compactions.
const usedTokensCompactEvery = 4096

type usedTokensState struct {
	Used map[string]int64 `cbor:"1,keyasint"`
}

type usedTokenRecord struct {
	JTI    string `cbor:"1,keyasint"`
	Expiry int64  `cbor:"2,keyasint"`
}

// OpenUsedTokens opens the store at path (created on first use). now
// defaults to time.Now.
func OpenUsedTokens(path string, now func() time.Time) (*FileUsedTokens, error) {
	return openUsedTokens(nil, path, now)
}

func openUsedTokens(fsys atomicfile.FS, path string, now func() time.Time) (*FileUsedTokens, error) {
	if fsys == nil {
		fsys = atomicfile.OS{}
	}
	if now == nil {
		now = time.Now
	}
	snap, err := statefile.New("d2c.usedtokens.v1", limits.UsedTokens)
	if err != nil {
		return nil, err
	}
	rec, err := statefile.New("d2c.usedtoken.v1", 2)
	if err != nil {
		return nil, err
	}
	u := &FileUsedTokens{path: path, fsys: fsys, now: now, snap: snap, rec: rec, used: map[string]int64{},
		compactEvery: usedTokensCompactEvery}
	var st usedTokensState
	switch err := snap.Load(path, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("identity: used tokens: %w", err)
	default:
		if st.Used != nil {
			u.used = st.Used
		}
	}
	hadJournal, err := u.replay()
	if err != nil {
		return nil, err
	}
	if hadJournal || u.expiredLocked() {
		if err := u.compactLocked(); err != nil {
			return nil, err
		}
	}
	return u, nil
}

func (u *FileUsedTokens) cutoff() int64 { return u.now().Add(-tokenLeeway).Unix() }

// expiredLocked reports whether some remembered token has expired.
func (u *FileUsedTokens) expiredLocked() bool {
	c := u.cutoff()
	for _, exp := range u.used {
		if exp < c {
			return true
		}
	}
	return false
}

func (u *FileUsedTokens) journalPath() string { return u.path + ".journal" }

// replay adds the journal's intact records to the set; it stops at the first
// torn or corrupt one, which no Consume acknowledged. It reports whether a
// journal exists.
func (u *FileUsedTokens) replay() (bool, error) {
	b, err := atomicfile.ReadFile(u.journalPath(), limits.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("identity: used tokens journal: %w", err)
	}
	for len(b) >= 4 {
		n := binary.BigEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			break
		}
		var r usedTokenRecord
		if err := u.rec.Unmarshal(b[4:4+n], &r); err != nil {
			break
		}
		u.used[r.JTI] = r.Expiry
		b = b[4+n:]
	}
	return true, nil
}

// compactLocked writes the unexpired set as a new snapshot, then starts an
// empty journal. A crash between the two replays the old journal over the
// new snapshot on the next open: a union, so nothing is lost.
func (u *FileUsedTokens) compactLocked() error {
	cutoff := u.cutoff()
	next := make(map[string]int64, len(u.used))
	for k, exp := range u.used {
		if exp >= cutoff {
			next[k] = exp
		}
	}
	if err := u.snap.Save(u.fsys, u.path, usedTokensState{Used: next}); err != nil {
		return fmt.Errorf("identity: used tokens snapshot: %w", err)
	}
	if u.journal != nil {
		_ = u.journal.Close()
		u.journal = nil
	}
	if err := atomicfile.Remove(u.fsys, u.journalPath()); err != nil {
		return fmt.Errorf("identity: used tokens: %w", err)
	}
	u.used, u.pending, u.broken = next, 0, false
	return nil
}

// Consume marks jti used. It fails with [ErrTokenReused] if it was, and
// with [ErrTooLarge] if the store is full; on any error the token is not
// recorded and may be presented again.
func (u *FileUsedTokens) Consume(ctx context.Context, jti string, expiry time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.used[jti]; ok {
		return fmt.Errorf("%w: jti %q", ErrTokenReused, truncate(jti))
	}
	if u.broken || u.pending >= u.compactEvery || len(u.used) >= limits.UsedTokens {
		if err := u.compactLocked(); err != nil {
			return err
		}
	}
	if len(u.used) >= limits.UsedTokens {
		return fmt.Errorf("%w: %d unexpired used tokens", ErrTooLarge, len(u.used))
	}
	payload, err := u.rec.Marshal(usedTokenRecord{JTI: jti, Expiry: expiry.Unix()})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	_ = binary.Write(&buf, binary.BigEndian, uint32(len(payload)))
	buf.Write(payload)
	if u.journal == nil {
		f, err := u.fsys.OpenFile(u.journalPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("identity: used tokens journal: %w", err)
		}
		u.journal = f
		// The journal's directory entry must be durable before a record
		// in it counts.
		if err := u.fsys.SyncDir(dirOf(u.path)); err != nil {
			u.broken = true
			return fmt.Errorf("identity: used tokens journal: %w", err)
		}
	}
	if _, err := u.journal.Write(buf.Bytes()); err != nil {
		u.broken = true
		return fmt.Errorf("identity: record used token: %w", err)
	}
	if err := u.journal.Sync(); err != nil {
		u.broken = true
		return fmt.Errorf("identity: record used token: %w", err)
	}
	u.used[jti] = expiry.Unix()
	u.pending++
	return nil
}

// Close releases the journal file.
func (u *FileUsedTokens) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.journal == nil {
		return nil
	}
	err := u.journal.Close()
	u.journal = nil
	return err
}
