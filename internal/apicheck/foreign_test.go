// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package apicheck

import (
	"fmt"
	"go/types"
	"sort"
	"strings"
	"testing"
)

// adapters are packages whose purpose is to plug d2c into a third-party
// library, so that their API must name that library's types; each maps to
// the import paths it may mention, and nothing else is allowed.
var adapters = map[string][]string{
	// mochihook.Hook is a mochi-mqtt hook (it embeds mochi's HookBase and
	// implements its callbacks) for whoever runs a mochi broker; the
	// packages that only use one (devbroker) keep mochi out of their API.
	modulePath + "/transport/mochihook": {"github.com/mochi-mqtt/server/v2"},
}

// TestNoForeignTypesInAPI fails if an exported identifier of a public
// package mentions a type from an internal package, or from a module other
// than the standard library and d2c, anywhere a user can reach it: function
// and method signatures, exported struct fields, embedded fields, interface
// methods, variable and constant types, alias targets, type arguments and
// constraints, and the exported members of unexported types such a
// signature returns.
func TestNoForeignTypesInAPI(t *testing.T) {
	var found []string
	for _, p := range publicPackages(t) {
		pkg := loadTypes(t, p)
		w := &walker{pkg: pkg, allowed: adapters[p.ImportPath], seen: map[types.Type]bool{}}
		w.pkgAPI()
		found = append(found, w.found...)
	}
	sort.Strings(found)
	for _, f := range found {
		t.Error(f)
	}
	if len(found) > 0 {
		t.Logf("%d exported signatures mention internal or third-party types", len(found))
	}
}

type walker struct {
	pkg     *types.Package
	allowed []string
	seen    map[types.Type]bool
	where   string
	found   []string
}

func (w *walker) pkgAPI() {
	scope := w.pkg.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		w.where = w.pkg.Name() + "." + name
		switch obj := obj.(type) {
		case *types.TypeName:
			if obj.IsAlias() {
				w.walk(obj.Type())
				continue
			}
			w.named(obj.Type())
		default:
			w.walk(obj.Type())
		}
	}
}

// named walks a defined type of d2c: its type parameters, its underlying
// type and its exported methods.
func (w *walker) named(t types.Type) {
	n, ok := t.(*types.Named)
	if !ok || w.seen[n] {
		return
	}
	w.seen[n] = true
	where := w.where
	for i := 0; i < n.TypeParams().Len(); i++ {
		w.walk(n.TypeParams().At(i).Constraint())
	}
	w.walk(n.Underlying())
	for i := 0; i < n.NumMethods(); i++ {
		m := n.Method(i)
		if !m.Exported() {
			continue
		}
		w.where = where + "." + m.Name()
		w.walk(m.Type())
	}
	w.where = where
}

func (w *walker) report(obj *types.TypeName) {
	w.found = append(w.found, fmt.Sprintf("%s: %s.%s", w.where, obj.Pkg().Path(), obj.Name()))
}

func (w *walker) walk(t types.Type) {
	switch t := t.(type) {
	case *types.Basic, nil:
	case *types.Alias:
		if obj := t.Obj(); obj.Pkg() != nil && w.foreign(obj.Pkg().Path()) {
			w.report(obj)
			return
		}
		w.walk(types.Unalias(t))
	case *types.Named:
		obj := t.Obj()
		if obj.Pkg() == nil { // error, comparable
			return
		}
		if w.foreign(obj.Pkg().Path()) {
			w.report(obj)
			return
		}
		for i := 0; i < t.TypeArgs().Len(); i++ {
			w.walk(t.TypeArgs().At(i))
		}
		// An unexported type of this package reached from an exported
		// signature exposes its exported fields and methods.
		if obj.Pkg() == w.pkg && !obj.Exported() {
			where := w.where
			w.where += "(" + obj.Name() + ")"
			w.named(t.Origin())
			w.where = where
		}
	case *types.Pointer:
		w.walk(t.Elem())
	case *types.Slice:
		w.walk(t.Elem())
	case *types.Array:
		w.walk(t.Elem())
	case *types.Chan:
		w.walk(t.Elem())
	case *types.Map:
		w.walk(t.Key())
		w.walk(t.Elem())
	case *types.Signature:
		for i := 0; i < t.TypeParams().Len(); i++ {
			w.walk(t.TypeParams().At(i).Constraint())
		}
		w.tuple(t.Params())
		w.tuple(t.Results())
	case *types.Struct:
		where := w.where
		for i := 0; i < t.NumFields(); i++ {
			f := t.Field(i)
			if f.Exported() || f.Embedded() {
				w.where = where + "." + f.Name()
				w.walk(f.Type())
			}
		}
		w.where = where
	case *types.Interface:
		where := w.where
		for i := 0; i < t.NumExplicitMethods(); i++ {
			m := t.ExplicitMethod(i)
			if m.Exported() {
				w.where = where + "." + m.Name()
				w.walk(m.Type())
			}
		}
		w.where = where
		for i := 0; i < t.NumEmbeddeds(); i++ {
			w.walk(t.EmbeddedType(i))
		}
	case *types.TypeParam:
		// Its constraint is walked where it is declared.
	case *types.Union:
		for i := 0; i < t.Len(); i++ {
			w.walk(t.Term(i).Type())
		}
	case *types.Tuple:
		w.tuple(t)
	default:
		w.found = append(w.found, fmt.Sprintf("%s: unhandled type %T", w.where, t))
	}
}

func (w *walker) tuple(t *types.Tuple) {
	for i := 0; i < t.Len(); i++ {
		w.walk(t.At(i).Type())
	}
}

// foreign reports whether a user of d2c cannot rely on the package at path
// staying as it is: an internal package (of d2c or anyone), or one outside
// the standard library and d2c, unless this package adapts to it.
func (w *walker) foreign(path string) bool {
	if isInternal(path) {
		return true
	}
	if path == modulePath || strings.HasPrefix(path, modulePath+"/") {
		return false
	}
	first, _, _ := strings.Cut(path, "/")
	if !strings.Contains(first, ".") {
		return false // the standard library
	}
	for _, a := range w.allowed {
		if path == a || strings.HasPrefix(path, a+"/") {
			return false
		}
	}
	return true
}
