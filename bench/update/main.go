// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command update measures what installing an update costs next to the
// primitives it is bound by, and prints them side by side:
//
//   - SHA-256 of the image in memory;
//   - writing the image to a file on the same disk and fsyncing it;
//   - fetching it over HTTP from 127.0.0.1 and hashing it (no disk);
//   - the agent's Install: metadata already verified, download over HTTP
//     from 127.0.0.1 into the inactive directory slot while hashing, fsync,
//     a second hash of what the slot holds, and the switch on trial.
//
// The design target is an install close to min(SHA-256, disk write), with
// memory flat in the image size; the program reports the bytes allocated
// and the peak heap for two image sizes. It uses only the public update
// API and removes its temporary directory before it exits. Run it with:
//
//	go run ./bench/update [-size 64] [-count 3]
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

func main() {
	size := flag.Int("size", 64, "image size in MiB")
	count := flag.Int("count", 3, "runs of each measurement; the fastest counts")
	flag.Parse()
	if *size < 1 || *size > 1024 || *count < 1 || *count > 10 {
		fmt.Fprintln(os.Stderr, "bench/update: -size must be 1 to 1024 MiB, -count 1 to 10")
		os.Exit(2)
	}
	if err := run(os.Stdout, *size<<20, *count); err != nil {
		fmt.Fprintln(os.Stderr, "bench/update:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, size, count int) error {
	dir, err := os.MkdirTemp("", "d2c-bench-update-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(w, "d2c update benchmark: %s %s/%s, %s, %d CPUs, %d MiB image, fastest of %d runs, disk: %s\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), size>>20, count, dir)

	img := make([]byte, size)
	if _, err := rand.Read(img); err != nil {
		return err
	}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		http.ServeContent(rw, r, "image", time.Time{}, bytes.NewReader(img))
	}))
	defer srv.Close()

	best := func(fn func() (time.Duration, error)) (time.Duration, error) {
		var b time.Duration
		for i := range count {
			d, err := fn()
			if err != nil {
				return 0, err
			}
			if i == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	hash, err := best(func() (time.Duration, error) {
		start := time.Now()
		sha256.Sum256(img)
		return time.Since(start), nil
	})
	if err != nil {
		return err
	}
	disk, err := best(func() (time.Duration, error) { return writeFile(filepath.Join(dir, "raw"), img) })
	if err != nil {
		return err
	}
	fetch, err := best(func() (time.Duration, error) {
		start := time.Now()
		resp, err := http.Get(srv.URL)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		h := sha256.New()
		if _, err := io.CopyBuffer(h, resp.Body, make([]byte, 128<<10)); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	})
	if err != nil {
		return err
	}

	pipeline, err := best(func() (time.Duration, error) {
		path := filepath.Join(dir, "pipeline")
		_ = os.Remove(path)
		start := time.Now()
		resp, err := http.Get(srv.URL)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.CopyBuffer(io.MultiWriter(f, h), resp.Body, make([]byte, 128<<10)); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	})
	if err != nil {
		return err
	}

	r, err := newRepo(dir)
	if err != nil {
		return err
	}
	defer r.srv.Close()
	var alloc, peak [2]uint64
	var install time.Duration
	sizes := [2]int{size / 4, size}
	for i, n := range sizes {
		d, a, p, err := r.install(filepath.Join(dir, fmt.Sprintf("device-%d", i)), img[:n], count)
		if err != nil {
			return fmt.Errorf("install: %w", err)
		}
		alloc[i], peak[i] = a, p
		if i == 1 {
			install = d
		}
	}

	mbs := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	bound := min(mbs(hash), mbs(disk))
	const row = "%-58s %10.0f MB/s %8.2f s\n"
	fmt.Fprintf(w, "%-58s %15s %10s\n", "operation", "throughput", "time")
	fmt.Fprintf(w, row, "SHA-256 in memory", mbs(hash), hash.Seconds())
	fmt.Fprintf(w, row, "write + fsync a file (same disk)", mbs(disk), disk.Seconds())
	fmt.Fprintf(w, row, "HTTP GET from 127.0.0.1 + SHA-256, no disk", mbs(fetch), fetch.Seconds())
	fmt.Fprintf(w, row, "bare pipeline: HTTP GET -> SHA-256 + write, fsync", mbs(pipeline), pipeline.Seconds())
	fmt.Fprintf(w, row, "agent Install (download, write, fsync, re-hash, switch)", mbs(install), install.Seconds())
	fmt.Fprintf(w, "\nInstall: %.2fx the bare pipeline's time; %.2f of min(SHA-256, disk write) = %.0f MB/s, a bound that\n"+
		"leaves out the network (here an HTTP server on the same two cores)\n", install.Seconds()/pipeline.Seconds(), mbs(install)/bound, bound)
	fmt.Fprintf(w, "\nmemory during Install (metadata verified before):\n")
	for i, n := range sizes {
		fmt.Fprintf(w, "  %4d MiB image: %8.1f KiB allocated, peak heap growth %8.1f KiB\n", n>>20, float64(alloc[i])/1024, float64(peak[i])/1024)
	}
	return nil
}

// writeFile writes b in 128 KiB pieces, as the agent does, and fsyncs.
func writeFile(path string, b []byte) (time.Duration, error) {
	_ = os.Remove(path)
	start := time.Now()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	for off := 0; off < len(b); off += 128 << 10 {
		if _, err := f.Write(b[off:min(off+128<<10, len(b))]); err != nil {
			f.Close()
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	return time.Since(start), f.Close()
}

// repo is a one-key-per-role update repository served on 127.0.0.1.
type repo struct {
	mu               sync.Mutex
	files            map[string][]byte
	srv              *httptest.Server
	root             []byte
	keys             *benchutil.UpdateKeys
	version, tstamps uint64
}

func newRepo(dir string) (*repo, error) {
	r := &repo{files: map[string][]byte{}}
	keys, err := benchutil.NewUpdateKeys()
	if err != nil {
		return nil, err
	}
	r.keys, r.root = keys, keys.Root
	r.files["1.root.json"] = keys.Root
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		b, ok := r.files[req.URL.Path[1:]]
		r.mu.Unlock()
		if !ok {
			http.NotFound(w, req)
			return
		}
		http.ServeContent(w, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	return r, nil
}

// publish signs a release of img with a fresh timestamp.
func (r *repo) publish(img []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.version++
	name := fmt.Sprintf("image-%d", r.version)
	art, err := update.NewArtifact("image", name, bytes.NewReader(img), nil)
	if err != nil {
		return err
	}
	rel := &update.Release{Version: r.version, SecurityCounter: 1, HardwareClass: "bench", Artifacts: []update.Artifact{art}}
	r.tstamps++
	rb, tb, err := r.keys.Sign(rel, r.tstamps)
	if err != nil {
		return err
	}
	r.files[name], r.files[fmt.Sprintf("%d.release.json", r.version)], r.files["timestamp.json"] = img, rb, tb
	return nil
}

// install runs count installs of img on fresh devices in dir and returns
// the fastest Install, and the bytes allocated and the peak growth of the
// heap in use during the last.
func (r *repo) install(dir string, img []byte, count int) (best time.Duration, alloc, peak uint64, err error) {
	if err := r.publish(img); err != nil {
		return 0, 0, 0, err
	}
	for i := range count {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := slot.InitDirSlots(filepath.Join(d, "slots"), bytes.NewReader([]byte("v0"))); err != nil {
			return 0, 0, 0, err
		}
		s, err := slot.OpenDirSlots(filepath.Join(d, "slots"))
		if err != nil {
			return 0, 0, 0, err
		}
		ctx := context.Background()
		a, err := update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(d, "agent"), Root: r.root, HardwareClass: "bench",
			Slots: s, Source: &update.HTTPSource{BaseURL: r.srv.URL + "/"}, Client: &http.Client{}})
		if err != nil {
			return 0, 0, 0, err
		}
		o, err := a.Check(ctx)
		if err != nil || o == nil {
			a.Close()
			return 0, 0, 0, fmt.Errorf("check: %v (offer %v)", err, o)
		}
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		var took time.Duration
		top, err := benchutil.HeapPeak(func() error {
			start := time.Now()
			err := a.Install(ctx, o)
			took = time.Since(start)
			return err
		})
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		a.Close()
		if err != nil {
			return 0, 0, 0, err
		}
		if i == 0 || took < best {
			best = took
		}
		alloc, peak = after.TotalAlloc-before.TotalAlloc, top
		if err := os.RemoveAll(d); err != nil {
			return 0, 0, 0, err
		}
	}
	return best, alloc, peak, nil
}
