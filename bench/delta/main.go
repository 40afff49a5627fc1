// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command delta measures delta images (update.NewDelta) against full
// images, side by side, on two realistic pairs of images:
//
//   - two builds of examples/device a commit apart: the program built
//     stripped at the work tree, and again with one log message changed
//     (through go build -overlay, so the tree is not touched);
//   - a root-file-system-like image: a tar of a few hundred files (text,
//     code-like and random data), 64 MiB, then the same tar with three
//     files edited, one grown by 10 KiB (shifting everything after it) and
//     one added.
//
// For each pair it prints the bytes a device downloads and the agent's
// Install time (download over HTTP from 127.0.0.1, write, fsync, re-hash,
// switch) for the full image and for the delta (base check, download,
// patch from the running slot, verify), an estimate of both over a 10
// Mbit/s link (the Install plus the bytes at that rate), the peak heap
// growth while
// installing, and what the cloud spends making the delta. For comparison
// it runs the zstd library alone as "zstd --patch-from" would: one frame
// over the whole image with the whole base as its dictionary, in memory,
// whose window and memory grow with the image. Run it with:
//
//	go run ./bench/delta [-size 64] [-count 3]
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/d2c-iot/d2c/bench/internal/benchutil"
	"github.com/d2c-iot/d2c/update"
	"github.com/d2c-iot/d2c/update/slot"
)

func main() {
	size := flag.Int("size", 64, "size of the root-file-system image in MiB")
	count := flag.Int("count", 3, "installs of each kind; the fastest counts")
	flag.Parse()
	if *size < 4 || *size > 512 || *count < 1 || *count > 10 {
		fmt.Fprintln(os.Stderr, "bench/delta: -size must be 4 to 512 MiB, -count 1 to 10")
		os.Exit(2)
	}
	if err := run(os.Stdout, *size<<20, *count); err != nil {
		fmt.Fprintln(os.Stderr, "bench/delta:", err)
		os.Exit(1)
	}
}

type pair struct {
	name     string
	old, new []byte
}

func run(w io.Writer, size, count int) error {
	dir, err := os.MkdirTemp("", "d2c-bench-delta-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(w, "d2c delta benchmark: %s %s/%s, %s, %d CPUs, fastest of %d installs, disk: %s\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, benchutil.CPUModel(), runtime.NumCPU(), count, dir)
	dev1, dev2, err := deviceBuilds(dir)
	if err != nil {
		return fmt.Errorf("build examples/device: %w", err)
	}
	fs1, fs2, err := rootfs(size)
	if err != nil {
		return err
	}
	pairs := []pair{{"examples/device, stripped, one string changed", dev1, dev2}, {fmt.Sprintf("root file system tar, %d MiB, 5 files changed", size>>20), fs1, fs2}}

	const row = "%-26s %14s %14s %10s\n"
	for _, p := range pairs {
		r, err := newRepo()
		if err != nil {
			return err
		}
		res, err := r.measure(filepath.Join(dir, "dev"), p, count)
		r.srv.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		raw, err := rawPatchFrom(p.old, p.new)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s: %s -> %s\n", p.name, mib(len(p.old)), mib(len(p.new)))
		fmt.Fprintf(w, row, "", "full image", "delta", "delta/full")
		fmt.Fprintf(w, row, "bytes downloaded", mib(int(res.full.bytes)), mib(int(res.delta.bytes)), ratio(float64(res.delta.bytes), float64(res.full.bytes)))
		fmt.Fprintf(w, row, "Install time", secs(res.full.took), secs(res.delta.took), ratio(res.delta.took.Seconds(), res.full.took.Seconds()))
		atLink := func(i install) time.Duration {
			return i.took + time.Duration(float64(i.bytes)*8/linkRate*float64(time.Second))
		}
		fmt.Fprintf(w, row, "at 10 Mbit/s (estimate)", secs(atLink(res.full)), secs(atLink(res.delta)), ratio(atLink(res.delta).Seconds(), atLink(res.full).Seconds()))
		fmt.Fprintf(w, row, "peak heap growth", mib(int(res.full.peak)), mib(int(res.delta.peak)), "")
		fmt.Fprintf(w, "  cloud: NewDelta %s (%.0f MB/s of new image)\n", secs(res.make), float64(len(p.new))/res.make.Seconds()/1e6)
		fmt.Fprintf(w, "  zstd library alone, one patch-from frame (whole base as dictionary, window %s, in memory):\n", mib(raw.window))
		fmt.Fprintf(w, "    %s; encode %s, decode %s (%.0f MB/s), peak heap growth while decoding %s\n\n",
			mib(raw.size), secs(raw.encode), secs(raw.decode), float64(len(p.new))/raw.decode.Seconds()/1e6, mib(int(raw.peak)))
	}
	return nil
}

// linkRate is the link, in bits per second, of the estimated install
// times: the measured Install plus the bytes downloaded at that rate.
const linkRate = 10e6

func mib(n int) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

func ratio(a, b float64) string { return fmt.Sprintf("%.3f", a/b) }

// deviceBuilds builds examples/device twice, stripped: as it is, and with
// one log message changed through an overlay (a commit's worth of change).
func deviceBuilds(dir string) ([]byte, []byte, error) {
	src, err := filepath.Abs("examples/device/main.go")
	if err != nil {
		return nil, nil, err
	}
	code, err := os.ReadFile(src)
	if err != nil {
		return nil, nil, fmt.Errorf("run from the module root: %w", err)
	}
	const old = `"release confirmed after its health check"`
	if !bytes.Contains(code, []byte(old)) {
		return nil, nil, fmt.Errorf("%s no longer logs %s: change the benchmark's edit", src, old)
	}
	changed := filepath.Join(dir, "main.go")
	if err := os.WriteFile(changed, bytes.Replace(code, []byte(old), []byte(`"release confirmed: health check passed"`), 1), 0o600); err != nil {
		return nil, nil, err
	}
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {src: changed}})
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay.json"), overlay, 0o600); err != nil {
		return nil, nil, err
	}
	var out [2][]byte
	for i, extra := range [][]string{nil, {"-overlay", filepath.Join(dir, "overlay.json")}} {
		bin := filepath.Join(dir, fmt.Sprintf("device-%d", i))
		args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin}, extra...)
		cmd := exec.Command("go", append(args, "./examples/device")...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("%v: %s", err, b)
		}
		if out[i], err = os.ReadFile(bin); err != nil {
			return nil, nil, err
		}
	}
	if bytes.Equal(out[0], out[1]) {
		return nil, nil, errors.New("the two builds are identical")
	}
	return out[0], out[1], nil
}

// rootfs returns a tar of a few hundred files of about size bytes, and
// the same tar with five files changed.
func rootfs(size int) ([]byte, []byte, error) {
	r := rand.New(rand.NewPCG(1, 2))
	type file struct {
		name string
		data []byte
	}
	var files []file
	words := strings.Fields("the device gateway config service network interface address route sensor update slot kernel module library")
	for total, i := 0, 0; total < size-size/64; i++ {
		var data []byte
		switch i % 4 {
		case 0: // text: configuration, scripts
			var b strings.Builder
			for b.Len() < 2000+r.IntN(30000) {
				fmt.Fprintf(&b, "%s_%d = %s %d\n", words[r.IntN(len(words))], r.IntN(100), words[r.IntN(len(words))], r.IntN(1000))
			}
			data = []byte(b.String())
		case 1, 2: // code-like: a small alphabet, repetitive
			data = make([]byte, 20000+r.IntN(400000))
			for j := range data {
				data[j] = byte(r.IntN(24)) * 7
			}
		default: // compressed data (images, archives)
			data = make([]byte, 10000+r.IntN(200000))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
		}
		files = append(files, file{fmt.Sprintf("usr/lib/d2c/%03d/file-%04d", i%40, i), data})
		total += len(data) + 512
	}
	pack := func(fs []file) ([]byte, error) {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, f := range fs {
			if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(1700000000, 0)}); err != nil {
				return nil, err
			}
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
		return b.Bytes(), tw.Close()
	}
	old, err := pack(files)
	if err != nil {
		return nil, nil, err
	}
	for _, i := range []int{len(files) / 5, len(files) / 2, 4 * len(files) / 5} {
		d := bytes.Clone(files[i].data)
		for range 50 {
			d[r.IntN(len(d))]++
		}
		files[i].data = d
	}
	grow := len(files) / 3
	files[grow].data = append(bytes.Clone(files[grow].data), bytes.Repeat([]byte("added line\n"), 1000)...)
	files = append(files, file{"etc/d2c/new.conf", []byte("a new file\n")})
	nw, err := pack(files)
	return old, nw, err
}

type install struct {
	bytes int64
	took  time.Duration
	peak  uint64
}

type result struct {
	full, delta install
	make        time.Duration
}

// repo is an update repository on 127.0.0.1 that counts the bytes it
// serves.
type repo struct {
	mu      sync.Mutex
	files   map[string][]byte
	srv     *httptest.Server
	keys    *benchutil.UpdateKeys
	served  atomic.Int64
	tstamps uint64
	current func() error // publishes the current release again
}

func newRepo() (*repo, error) {
	keys, err := benchutil.NewUpdateKeys()
	if err != nil {
		return nil, err
	}
	r := &repo{files: map[string][]byte{"1.root.json": keys.Root}, keys: keys}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		b, ok := r.files[req.URL.Path[1:]]
		r.mu.Unlock()
		if !ok {
			http.NotFound(w, req)
			return
		}
		http.ServeContent(counting{w, &r.served}, req, req.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	return r, nil
}

type counting struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c counting) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// publish signs release version of img, with deltas, and a timestamp.
func (r *repo) publish(version uint64, img []byte, deltas map[string][]byte, entries []update.Delta) error {
	name := fmt.Sprintf("image-%d", version)
	art, err := update.NewArtifact("image", name, bytes.NewReader(img), nil)
	if err != nil {
		return err
	}
	rel := &update.Release{Version: version, SecurityCounter: 1, HardwareClass: "bench", Artifacts: []update.Artifact{art},
		Deltas: entries}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tstamps++
	rb, tb, err := r.keys.Sign(rel, r.tstamps)
	if err != nil {
		return err
	}
	r.files[name], r.files[fmt.Sprintf("%d.release.json", version)], r.files["timestamp.json"] = img, rb, tb
	for k, v := range deltas {
		r.files[k] = v
	}
	if version > 1 {
		r.current = func() error { return r.publish(version, img, deltas, entries) }
	}
	return nil
}

// measure installs p.new over p.old, count times each, from the full
// image (release 2) and from a delta (release 3, the same image).
func (r *repo) measure(dir string, p pair, count int) (result, error) {
	var res result
	if err := r.publish(1, p.old, nil, nil); err != nil {
		return res, err
	}
	if err := r.publish(2, p.new, nil, nil); err != nil {
		return res, err
	}
	start := time.Now()
	var d bytes.Buffer
	art, err := update.NewArtifact("image", "image-3", bytes.NewReader(p.new), nil)
	if err != nil {
		return res, err
	}
	entry, err := update.NewDelta(&d, "image-3.delta", art, bytes.NewReader(p.new),
		update.DeltaBase{Version: 1, Image: bytes.NewReader(p.old), Length: int64(len(p.old))})
	if err != nil {
		return res, err
	}
	res.make = time.Since(start)
	for _, kind := range []string{"full", "delta"} {
		if kind == "delta" {
			if err := r.publish(3, p.new, map[string][]byte{"image-3.delta": d.Bytes()}, []update.Delta{entry}); err != nil {
				return res, err
			}
		}
		var best install
		for i := range count {
			got, err := r.installOver(filepath.Join(dir, fmt.Sprint(i)), p.old, kind == "delta")
			if err != nil {
				return res, fmt.Errorf("%s install: %w", kind, err)
			}
			if i == 0 || got.took < best.took {
				best.took = got.took
			}
			best.bytes, best.peak = got.bytes, max(best.peak, got.peak)
		}
		if kind == "full" {
			res.full = best
		} else {
			res.delta = best
		}
	}
	return res, nil
}

// installOver makes a device that runs release 1 (old, installed from the
// full image), then measures the Install of the repository's current
// release. With delta, it checks that the delta built the image.
func (r *repo) installOver(dir string, old []byte, delta bool) (install, error) {
	ctx := context.Background()
	if err := slot.InitDirSlots(filepath.Join(dir, "slots"), bytes.NewReader([]byte("v0"))); err != nil {
		return install{}, err
	}
	defer os.RemoveAll(dir)
	var last update.Result
	open := func() (*update.Agent, error) {
		s, err := slot.OpenDirSlots(filepath.Join(dir, "slots"))
		if err != nil {
			return nil, err
		}
		return update.NewAgent(ctx, update.AgentConfig{Dir: filepath.Join(dir, "agent"), Root: r.keys.Root, HardwareClass: "bench",
			Slots: s, Source: &update.HTTPSource{BaseURL: r.srv.URL + "/"}, Client: &http.Client{},
			Report: func(_ context.Context, res update.Result) { last = res }})
	}
	// Release 1 first: the repository serves it again for this device.
	if err := r.publish(1, old, nil, nil); err != nil {
		return install{}, err
	}
	a, err := open()
	if err != nil {
		return install{}, err
	}
	if ok, err := a.Update(ctx); err != nil || !ok {
		a.Close()
		return install{}, fmt.Errorf("install release 1: %v %v", ok, err)
	}
	a.Close()
	if a, err = open(); err != nil {
		return install{}, err
	}
	if _, err := a.Start(ctx); err != nil {
		a.Close()
		return install{}, err
	}
	if err := a.Confirm(ctx); err != nil {
		a.Close()
		return install{}, err
	}
	a.Close()
	if err := r.current(); err != nil {
		return install{}, err
	}

	if a, err = open(); err != nil {
		return install{}, err
	}
	defer a.Close()
	o, err := a.Check(ctx)
	if err != nil || o == nil {
		return install{}, fmt.Errorf("check: %v (offer %v)", err, o)
	}
	served := r.served.Load()
	var took time.Duration
	peak, err := benchutil.HeapPeak(func() error {
		start := time.Now()
		err := a.Install(ctx, o)
		took = time.Since(start)
		return err
	})
	if err != nil {
		return install{}, err
	}
	if delta && last.Delta != "applied" {
		return install{}, fmt.Errorf("the delta was not applied: %+v", last)
	}
	return install{bytes: r.served.Load() - served, took: took, peak: peak}, nil
}

type rawResult struct {
	size, window   int
	encode, decode time.Duration
	peak           uint64
}

// rawPatchFrom is the zstd library alone, as "zstd --patch-from": one
// frame, the whole base as a raw dictionary, a window that spans both.
func rawPatchFrom(old, nw []byte) (rawResult, error) {
	win := zstd.MinWindowSize
	for win < len(old)+len(nw) && win < zstd.MaxWindowSize {
		win *= 2
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(win), zstd.WithEncoderDictRaw(0, old))
	if err != nil {
		return rawResult{}, err
	}
	start := time.Now()
	frame := enc.EncodeAll(nw, nil)
	res := rawResult{size: len(frame), window: win, encode: time.Since(start)}
	enc.Close()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderDictRaw(0, old), zstd.WithDecoderMaxWindow(uint64(win)))
	if err != nil {
		return rawResult{}, err
	}
	defer dec.Close()
	start = time.Now()
	out, err := dec.DecodeAll(frame, nil)
	res.decode = time.Since(start)
	if err != nil || !bytes.Equal(out, nw) {
		return rawResult{}, fmt.Errorf("zstd patch-from round trip: %v", err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	res.peak = after.HeapInuse - min(after.HeapInuse, before.HeapInuse)
	return res, nil
}
