// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Command size measures what the device program (examples/device) costs
// beyond the floor of its dependencies (bench/size/floor: a program that
// links TLS, x509, autopaho, go-jose, fxamacker/cbor and net/http and does
// none of d2c's work), and where the difference goes, package by package.
//
//	go run ./bench/size                      # linux/arm, GOARM=7
//	go run ./bench/size -goarch arm64 -top 40
//	go run ./bench/size -device a.elf -floor b.elf   # unstripped binaries already built
//
// It builds both programs twice the way a device build is made
// (CGO_ENABLED=0, -trimpath, -tags nethttpomithttp2): stripped
// (-ldflags='-s -w') for the file sizes, and unstripped for the symbol
// table, which it reads with debug/elf (the same figures as `go tool nm
// -size`). It prints Markdown tables:
//
//   - the stripped file sizes and their difference;
//   - the bytes of each ELF section that is stored in the file;
//   - the bytes of each package that the device has more of than the floor:
//     its symbols' bytes (code, read-only and initialised data) and an
//     estimate that adds the package's share, in proportion to its code, of
//     the function metadata that has no per-function symbol (the .gopclntab
//     section and the go:func.* symbol), about 0.8 byte per byte of code;
//   - the largest functions and tables of d2c's own packages and of the
//     packages the floor does not link;
//   - d2c's code by source file, with each file's largest functions.
//
// Type descriptors, string data and the alignment of the segments (64 KiB
// on arm) have no symbol and are counted only in the section table.
package main

import (
	"cmp"
	"debug/elf"
	"debug/gosym"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

const modulePath = "github.com/d2c-iot/d2c"

func main() {
	goos := flag.String("goos", "linux", "GOOS of the builds")
	goarch := flag.String("goarch", "arm", "GOARCH of the builds")
	goarm := flag.String("goarm", "7", "GOARM of the builds (arm only)")
	tags := flag.String("tags", "nethttpomithttp2", "build tags of both builds")
	device := flag.String("device", "", "unstripped device binary to read instead of building ./examples/device")
	floor := flag.String("floor", "", "unstripped floor binary to read instead of building ./bench/size/floor")
	minDiff := flag.Int64("min", 4096, "list packages whose estimated difference is at least this many bytes")
	top := flag.Int("top", 30, "list this many of the largest symbols the floor lacks")
	flag.Parse()
	if err := run(os.Stdout, *goos, *goarch, *goarm, *tags, *device, *floor, *minDiff, *top); err != nil {
		fmt.Fprintln(os.Stderr, "size:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, goos, goarch, goarm, tags, devicePath, floorPath string, minDiff int64, top int) error {
	var devStripped, floorStripped int64
	if devicePath == "" || floorPath == "" {
		dir, err := os.MkdirTemp("", "d2c-size-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		b := builder{dir: dir, goos: goos, goarch: goarch, goarm: goarm, tags: tags}
		if devicePath == "" {
			if devicePath, devStripped, err = b.both("./examples/device", "device"); err != nil {
				return err
			}
		}
		if floorPath == "" {
			if floorPath, floorStripped, err = b.both("./bench/size/floor", "floor"); err != nil {
				return err
			}
		}
	}
	dev, err := readBinary(devicePath)
	if err != nil {
		return err
	}
	flo, err := readBinary(floorPath)
	if err != nil {
		return err
	}

	if devStripped > 0 && floorStripped > 0 {
		fmt.Fprintf(w, "Stripped (%s/%s, -tags %s):\n\n", goos, goarch, tags)
		fmt.Fprintln(w, "| program | bytes | MiB |")
		fmt.Fprintln(w, "|---|---:|---:|")
		fmt.Fprintf(w, "| floor (bench/size/floor) | %s | %.2f |\n", commas(floorStripped), mib(floorStripped))
		fmt.Fprintf(w, "| device (examples/device) | %s | %.2f |\n", commas(devStripped), mib(devStripped))
		fmt.Fprintf(w, "| difference | %s | %.2f |\n\n", commas(devStripped-floorStripped), mib(devStripped-floorStripped))
	}

	fmt.Fprintln(w, "Sections stored in the file:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| section | floor | device | difference |")
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	var names []string
	for name := range dev.sections {
		names = append(names, name)
	}
	for name := range flo.sections {
		if _, ok := dev.sections[name]; !ok {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(dev.sections[b], dev.sections[a]) })
	var sf, sd int64
	for _, name := range names {
		f, d := flo.sections[name], dev.sections[name]
		sf, sd = sf+f, sd+d
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", name, commas(f), commas(d), signed(d-f))
	}
	fmt.Fprintf(w, "| total | %s | %s | %s |\n\n", commas(sf), commas(sd), signed(sd-sf))

	groups := []string{"d2c", "dependencies", "standard library and runtime", "no package"}
	fmt.Fprintln(w, "By kind of package (symbols; estimate with metadata share):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| packages | floor | device | difference | estimated difference |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for _, g := range groups {
		var f, d, ef, ed int64
		for p, s := range flo.pkgs {
			if group(p) == g {
				f += s.bytes
				ef += flo.estimate(s)
			}
		}
		for p, s := range dev.pkgs {
			if group(p) == g {
				d += s.bytes
				ed += dev.estimate(s)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", g, commas(f), commas(d), signed(d-f), signed(ed-ef))
	}
	fmt.Fprintln(w)

	type row struct {
		pkg       string
		f, d, est int64
		inFloor   bool
	}
	var rows []row
	for p, s := range dev.pkgs {
		fs, inFloor := flo.pkgs[p]
		if !inFloor {
			fs = &pkgSize{}
		}
		r := row{pkg: p, f: fs.bytes, d: s.bytes, est: dev.estimate(s) - flo.estimate(fs), inFloor: inFloor}
		if r.est >= minDiff {
			rows = append(rows, r)
		}
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(b.est, a.est) })
	fmt.Fprintf(w, "Packages whose estimated difference is %s bytes or more (\"new\": the floor does not link it):\n\n", commas(minDiff))
	fmt.Fprintln(w, "| package | group | floor | device | difference | estimated difference |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	for _, r := range rows {
		f := commas(r.f)
		if !r.inFloor {
			f = "new"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", short(r.pkg), group(r.pkg), f, commas(r.d), signed(r.d-r.f), signed(r.est))
	}
	fmt.Fprintln(w)

	var syms []symbol
	for _, s := range dev.syms {
		if _, ok := flo.pkgs[s.pkg]; ok && group(s.pkg) != "d2c" {
			continue
		}
		syms = append(syms, s)
	}
	slices.SortFunc(syms, func(a, b symbol) int { return cmp.Compare(b.size, a.size) })
	fmt.Fprintf(w, "The %d largest symbols of d2c's packages and of packages the floor does not link:\n\n", top)
	fmt.Fprintln(w, "| bytes | kind | symbol |")
	fmt.Fprintln(w, "|---:|---|---|")
	for _, s := range syms[:min(top, len(syms))] {
		fmt.Fprintf(w, "| %s | %s | `%s` |\n", commas(s.size), s.kind, short(s.name))
	}
	fmt.Fprintln(w)

	var files []string
	var total, funcs int64
	for file, fs := range dev.files {
		files = append(files, file)
		total, funcs = total+fs.code, funcs+fs.funcs
	}
	slices.SortFunc(files, func(a, b string) int { return cmp.Compare(dev.files[b].code, dev.files[a].code) })
	fmt.Fprintln(w, "d2c's code by source file (a function counts in the file it starts in):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| file | functions | code bytes | largest functions |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	for _, file := range files {
		fs := dev.files[file]
		slices.SortFunc(fs.largest, func(a, b symbol) int { return cmp.Compare(b.size, a.size) })
		var names []string
		for _, s := range fs.largest[:min(3, len(fs.largest))] {
			names = append(names, fmt.Sprintf("`%s` %s", short(s.name), commas(s.size)))
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s |\n", file, fs.funcs, commas(fs.code), strings.Join(names, ", "))
	}
	fmt.Fprintf(w, "| total | %d | %s | |\n", funcs, commas(total))
	return nil
}

type builder struct {
	dir, goos, goarch, goarm, tags string
}

// both builds pkg stripped and unstripped and returns the unstripped
// binary's path and the stripped one's size.
func (b builder) both(pkg, name string) (string, int64, error) {
	stripped := filepath.Join(b.dir, name+"-stripped")
	full := filepath.Join(b.dir, name)
	if err := b.build(pkg, stripped, "-s -w"); err != nil {
		return "", 0, err
	}
	if err := b.build(pkg, full, ""); err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(stripped)
	if err != nil {
		return "", 0, err
	}
	return full, fi.Size(), nil
}

func (b builder) build(pkg, out, ldflags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-tags", b.tags, "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+b.goos, "GOARCH="+b.goarch, "GOARM="+b.goarm)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

type symbol struct {
	name, pkg, kind string
	size            int64
}

type fileSize struct {
	code, funcs int64
	largest     []symbol
}

type pkgSize struct {
	bytes int64 // all its symbols stored in the file
	code  int64 // of which in .text
}

type binary struct {
	sections map[string]int64 // allocated sections stored in the file
	pkgs     map[string]*pkgSize
	syms     []symbol
	files    map[string]*fileSize // d2c's code by source file
	code     int64                // .text bytes that have a symbol
	meta     int64                // .gopclntab and go:func.*: per-function, no symbol each
}

// estimate adds to a package's symbol bytes its share of the function
// metadata, in proportion to its code.
func (b *binary) estimate(s *pkgSize) int64 {
	if s == nil {
		return 0
	}
	if s.code == 0 || b.code == 0 {
		return s.bytes
	}
	return s.bytes + b.meta*s.code/b.code
}

func readBinary(path string) (*binary, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	elfSyms, err := f.Symbols()
	if err != nil {
		if errors.Is(err, elf.ErrNoSymbols) {
			return nil, fmt.Errorf("%s has no symbol table: read an unstripped build", path)
		}
		return nil, err
	}
	b := &binary{sections: map[string]int64{}, pkgs: map[string]*pkgSize{}, files: map[string]*fileSize{}}
	lines, err := lineTable(f)
	if err != nil {
		return nil, err
	}
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Type != elf.SHT_NOBITS && s.Size > 0 {
			b.sections[s.Name] = int64(s.Size)
		}
	}
	b.meta = b.sections[".gopclntab"]
	for _, es := range elfSyms {
		if es.Size == 0 || int(es.Section) <= 0 || int(es.Section) >= len(f.Sections) {
			continue
		}
		sec := f.Sections[es.Section]
		if sec.Type == elf.SHT_NOBITS || sec.Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		size := int64(es.Size)
		if es.Name == "go:func.*" {
			b.meta += size
			continue
		}
		kind := "data"
		switch {
		case sec.Name == ".text":
			kind = "code"
		case sec.Flags&elf.SHF_WRITE == 0:
			kind = "rodata"
		}
		p := pkgOf(es.Name)
		ps := b.pkgs[p]
		if ps == nil {
			ps = &pkgSize{}
			b.pkgs[p] = ps
		}
		ps.bytes += size
		if kind == "code" {
			ps.code += size
			b.code += size
		}
		sym := symbol{name: es.Name, pkg: p, kind: kind, size: size}
		b.syms = append(b.syms, sym)
		if kind == "code" && group(p) == "d2c" {
			file, _, _ := lines.PCToLine(es.Value)
			if i := strings.Index(file, modulePath+"/"); i >= 0 {
				file = file[i+len(modulePath)+1:]
			}
			fs := b.files[file]
			if fs == nil {
				fs = &fileSize{}
				b.files[file] = fs
			}
			fs.code += size
			fs.funcs++
			fs.largest = append(fs.largest, sym)
		}
	}
	return b, nil
}

// lineTable reads the binary's .gopclntab, which maps a function's entry
// to its source file.
func lineTable(f *elf.File) (*gosym.Table, error) {
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return nil, errors.New("no .gopclntab or .text section")
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, err
	}
	return gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
}

// pkgOf returns the import path of the package a symbol belongs to, "" when
// it has none (linker tables, anonymous types).
func pkgOf(name string) string {
	for _, prefix := range []string{"type:.eq.", "type:.hash.", "type:", "go:itab.", "go:"} {
		if rest, ok := strings.CutPrefix(name, prefix); ok {
			name = rest
			if prefix == "go:" {
				return ""
			}
			break
		}
	}
	name = strings.TrimLeft(name, "*[]0123456789")
	if i := strings.IndexAny(name, "[(,{ "); i >= 0 {
		name = name[:i]
	}
	slash := strings.LastIndexByte(name, '/')
	dot := strings.IndexByte(name[slash+1:], '.')
	if dot <= 0 {
		return ""
	}
	return strings.ReplaceAll(name[:slash+1+dot], "%2e", ".")
}

func group(pkg string) string {
	switch {
	case pkg == "":
		return "no package"
	case pkg == "main" || pkg == modulePath || strings.HasPrefix(pkg, modulePath+"/"):
		return "d2c"
	case strings.Contains(strings.SplitN(pkg, "/", 2)[0], ".") && !strings.HasPrefix(pkg, "vendor/"):
		return "dependencies"
	}
	return "standard library and runtime"
}

func short(s string) string {
	s = strings.ReplaceAll(s, modulePath+"/", "d2c/")
	return strings.ReplaceAll(s, "|", `\|`)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func signed(n int64) string {
	if n > 0 {
		return "+" + commas(n)
	}
	return commas(n)
}

func commas(n int64) string {
	if n < 0 {
		return "-" + commas(-n)
	}
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
