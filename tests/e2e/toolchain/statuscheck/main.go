// Command statuscheck reports how real GitOps tooling judges the health of
// one Kubernetes object, so the e2e tests can assert on what Flux/kstatus
// users and Argo CD users would actually see for a FlashSale.
//
// Usage:
//
//	statuscheck --lua charts/flashsale-operator/docs/argocd-health.lua < object.json
//
// The object is read from stdin as JSON or YAML (a single document). One JSON
// line is written to stdout:
//
//	{"kstatus":{"status":"Current","message":"Resource is Ready"},
//	 "argocd":{"status":"Healthy","message":"..."}}
//
// kstatus: sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the library
// behind `kubectl`-style status polling, kpt, and (through Flux's fork of the
// same package) Flux's health checks. Its status is one of InProgress,
// Current, Failed, Terminating, NotFound, Unknown.
//
// argocd: the Lua health script, run the way Argo CD's util/lua package runs
// a resource.customizations.health script: gopher-lua, only the base,
// package and table libraries plus an os table restricted to os.time and
// os.date (unless --use-open-libs, the equivalent of
// resource.customizations.useOpenLibs), a 1 s deadline, the live object as the
// global `obj`, and the returned table's `status`/`message`. A status that is
// not one of Healthy, Progressing, Degraded, Suspended, Missing, Unknown is
// turned into Unknown with Argo CD's "Lua returned an invalid health status".
//
// Exit codes: 0 both evaluations succeeded; 1 one of them failed: the JSON
// line is still printed, the failing side reading status "Unknown" with the
// error as message (what Argo CD shows when a health script fails) and the
// same text in an extra "error" field; 2 usage or input error (message on
// stderr, nothing on stdout).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// verdict is one tool's judgement.
type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

type report struct {
	Kstatus verdict `json:"kstatus"`
	Argocd  verdict `json:"argocd"`
}

// Argo CD's health status codes (gitops-engine pkg/health).
var argoHealthCodes = map[string]bool{
	"Healthy":     true,
	"Progressing": true,
	"Degraded":    true,
	"Suspended":   true,
	"Missing":     true,
	"Unknown":     true,
}

const argoInvalidHealthStatus = "Lua returned an invalid health status"

func main() {
	luaPath := flag.String("lua", "", "path of the Argo CD health Lua script (required)")
	openLibs := flag.Bool("use-open-libs", false,
		"open all Lua standard libraries, like Argo CD's resource.customizations.useOpenLibs.<group_kind>: true")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(),
			"usage: %s --lua PATH [--use-open-libs] < object.{json,yaml}\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *luaPath == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}

	script, err := os.ReadFile(*luaPath)
	if err != nil {
		fatal("reading Lua script: %v", err)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fatal("reading stdin: %v", err)
	}
	obj, err := decodeObject(input)
	if err != nil {
		fatal("decoding object: %v", err)
	}

	var out report
	failed := false

	if res, err := status.Compute(obj.DeepCopy()); err != nil {
		out.Kstatus = failure(err)
		failed = true
	} else {
		out.Kstatus = verdict{Status: res.Status.String(), Message: res.Message}
	}

	if v, err := argoHealth(obj, string(script), *openLibs); err != nil {
		out.Argocd = failure(err)
		failed = true
	} else {
		out.Argocd = v
	}

	enc := json.NewEncoder(os.Stdout) // one line, newline-terminated
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fatal("writing result: %v", err)
	}
	if failed {
		os.Exit(1)
	}
}

func failure(err error) verdict {
	return verdict{Status: "Unknown", Message: err.Error(), Error: err.Error()}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "statuscheck: "+format+"\n", args...)
	os.Exit(2)
}

// decodeObject parses one JSON or YAML object. Numbers become int64 when they
// are integers and float64 otherwise, as in the unstructured objects that
// client-go (and so both Argo CD and the kstatus pollers) hand around.
func decodeObject(input []byte) (*unstructured.Unstructured, error) {
	data := bytes.TrimSpace(input)
	if len(data) == 0 {
		return nil, errors.New("empty input")
	}
	if data[0] != '{' {
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			return nil, fmt.Errorf("not JSON, and not YAML either: %w", err)
		}
		data = j
	}
	var m map[string]any
	if err := utiljson.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("input is not an object")
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// argoHealth runs the health script against obj.
func argoHealth(obj *unstructured.Unstructured, script string, openLibs bool) (verdict, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()

	if !openLibs {
		// What Argo CD opens when the standard libraries are off.
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{
			{lua.LoadLibName, lua.OpenPackage},
			{lua.BaseLibName, lua.OpenBase},
			{lua.TabLibName, lua.OpenTable},
			{lua.OsLibName, lua.OpenOs},
		} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
				lua.LString(lib.name)); err != nil {
				return verdict{}, fmt.Errorf("opening Lua library %q: %w", lib.name, err)
			}
		}
		restrictOs(l)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return verdict{}, fmt.Errorf("running Lua script: %w", err)
	}

	ret := l.Get(-1)
	tbl, ok := ret.(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	st, err := stringField(tbl, "status")
	if err != nil {
		return verdict{}, err
	}
	msg, err := stringField(tbl, "message")
	if err != nil {
		return verdict{}, err
	}
	if !argoHealthCodes[st] {
		return verdict{Status: "Unknown", Message: argoInvalidHealthStatus}, nil
	}
	return verdict{Status: st, Message: msg}, nil
}

// restrictOs replaces the os library by one holding only os.time and
// os.date, the "safe" os Argo CD exposes (also what require("os") returns).
func restrictOs(l *lua.LState) {
	full, ok := l.GetGlobal(lua.OsLibName).(*lua.LTable)
	if !ok {
		return
	}
	safe := l.NewTable()
	for _, name := range []string{"time", "date"} {
		safe.RawSetString(name, full.RawGetString(name))
	}
	l.SetGlobal(lua.OsLibName, safe)
	if loaded, ok := l.GetField(l.Get(lua.RegistryIndex), "_LOADED").(*lua.LTable); ok {
		loaded.RawSetString(lua.OsLibName, safe)
	}
}

// stringField reads an optional string field of the script's result. Argo CD
// round-trips the table through JSON into {status, message string}, so any
// other type there is an error for it too.
func stringField(tbl *lua.LTable, key string) (string, error) {
	switch v := tbl.RawGetString(key).(type) {
	case *lua.LNilType:
		return "", nil
	case lua.LString:
		return string(v), nil
	default:
		return "", fmt.Errorf("Lua result field %q is a %s, not a string", key, v.Type())
	}
}

// toLua converts a decoded JSON value to Lua: objects become tables keyed by
// string, arrays become sequences (1-based), numbers LNumber, strings
// LString, booleans LBool and null nil.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []any:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case json.Number:
		return lua.LString(x)
	default: // nil and anything unexpected
		return lua.LNil
	}
}
