package identity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
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

// FileUsedTokens is a [UsedTokens] persisted in one checksummed state file,
// rewritten atomically on every use. Entries are forgotten once their token
// has expired, since an expired token is refused anyway, so the file stays
// as small as the number of tokens used within [MaxTokenTTL].
type FileUsedTokens struct {
	path  string
	fsys  atomicfile.FS
	now   func() time.Time
	codec *statefile.Codec

	mu   sync.Mutex
	used map[string]int64 // jti -> expiry, Unix seconds
}

var _ UsedTokens = (*FileUsedTokens)(nil)

type usedTokensState struct {
	Used map[string]int64 `cbor:"1,keyasint"`
}

// OpenUsedTokens opens the store at path (created on first use). now
// defaults to time.Now.
func OpenUsedTokens(path string, now func() time.Time) (*FileUsedTokens, error) {
	return openUsedTokens(nil, path, now)
}

func openUsedTokens(fsys atomicfile.FS, path string, now func() time.Time) (*FileUsedTokens, error) {
	if now == nil {
		now = time.Now
	}
	codec, err := statefile.New("d2c.usedtokens.v1", limits.UsedTokens)
	if err != nil {
		return nil, err
	}
	u := &FileUsedTokens{path: path, fsys: fsys, now: now, codec: codec, used: map[string]int64{}}
	var st usedTokensState
	switch err := codec.Load(path, &st); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("identity: used tokens: %w", err)
	default:
		if st.Used != nil {
			u.used = st.Used
		}
	}
	return u, nil
}

// Consume marks jti used. It fails with [ErrTokenReused] if it was, and
// with [ErrTooLarge] if the store is full; on any error nothing changed.
func (u *FileUsedTokens) Consume(ctx context.Context, jti string, expiry time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.used[jti]; ok {
		return fmt.Errorf("%w: jti %q", ErrTokenReused, truncate(jti))
	}
	next := make(map[string]int64, len(u.used)+1)
	cutoff := u.now().Add(-tokenLeeway).Unix()
	for k, exp := range u.used {
		if exp >= cutoff {
			next[k] = exp
		}
	}
	if len(next) >= limits.UsedTokens {
		return fmt.Errorf("%w: %d unexpired used tokens", ErrTooLarge, len(next))
	}
	next[jti] = expiry.Unix()
	if err := u.codec.Save(u.fsys, u.path, usedTokensState{Used: next}); err != nil {
		return fmt.Errorf("identity: record used token: %w", err)
	}
	u.used = next
	return nil
}
