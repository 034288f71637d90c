// Command render renders a Helm chart's templates the way `helm template` does, for the
// parts of Helm that helm/dockyard uses, without Helm itself (no helm binary is
// reachable from dockyard's machines; Debian packages Go, sprig and sigs.k8s.io/yaml).
//
//	render [-f values.yaml]... [-name RELEASE] [-namespace NS] [-api-versions a/v1,b/v1] CHART
//
// What it does as Helm does:
//   - .Values: the chart's values.yaml with each -f file coalesced over it in order
//     (maps merge key by key, anything else replaces, a null removes the key); values are
//     read through sigs.k8s.io/yaml, so numbers are float64 as in Helm;
//   - .Release (Name, Namespace, Service "Helm", IsInstall, Revision 1), .Chart (Chart.yaml:
//     Name, Version, AppVersion, ...), .Capabilities (KubeVersion, APIVersions.Has),
//     .Template (Name, BasePath);
//   - the function map: sprig's TxtFuncMap without env and expandenv, and Helm's own
//     include, tpl, required, fail, toYaml, fromYaml, toJson, fromJson, lookup (always
//     empty, as in `helm template`);
//   - every file under templates/ is parsed into one set (so _helpers.tpl defines are
//     shared); files whose names start with "_" render nothing; missing keys render
//     empty ("<no value>" removed), as Helm's non-strict mode.
//
// The output is each non-empty template's text, in file-name order, after a
// "---\n# Source: CHART/templates/FILE" header: a multi-document YAML stream. An error
// (a failed `required`, a template error) is printed on stderr with exit status 1.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// apiVersions is .Capabilities.APIVersions: the group/versions the cluster serves.
type apiVersions []string

func (a apiVersions) Has(version string) bool {
	for _, v := range a {
		if v == version {
			return true
		}
	}
	return false
}

func main() {
	var files valueFiles
	flag.Var(&files, "f", "a values file coalesced over the chart's values.yaml (repeatable)")
	name := flag.String("name", "release-name", "the release name")
	namespace := flag.String("namespace", "default", "the release namespace")
	apis := flag.String("api-versions", "", "comma-separated API versions the cluster has")
	kube := flag.String("kube-version", "v1.30.0", "the cluster's Kubernetes version")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-f values.yaml]... CHART")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), files, *name, *namespace, *apis, *kube)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	values := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &values); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if values == nil {
		values = map[string]interface{}{}
	}
	return values, nil
}

// coalesce puts over onto base as Helm's chartutil.CoalesceTables does for a user's
// values: maps merge recursively, other values replace, a nil removes the key.
func coalesce(base, over map[string]interface{}) map[string]interface{} {
	for key, value := range over {
		if value == nil {
			delete(base, key)
			continue
		}
		sub, isMap := value.(map[string]interface{})
		old, wasMap := base[key].(map[string]interface{})
		if isMap && wasMap {
			base[key] = coalesce(old, sub)
		} else {
			base[key] = value
		}
	}
	return base
}

// chartMeta is .Chart: Chart.yaml's fields under Helm's Go names.
func chartMeta(chart string) (map[string]interface{}, error) {
	raw, err := readYAML(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	meta := map[string]interface{}{}
	for key, value := range raw {
		meta[strings.ToUpper(key[:1])+key[1:]] = value
	}
	return meta, nil
}

func render(chart string, files []string, name, namespace, apis, kube string) (string, error) {
	meta, err := chartMeta(chart)
	if err != nil {
		return "", err
	}
	values, err := readYAML(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, file := range files {
		over, err := readYAML(file)
		if err != nil {
			return "", err
		}
		values = coalesce(values, over)
	}
	chartName := fmt.Sprint(meta["Name"])
	top := map[string]interface{}{
		"Values": values,
		"Chart":  meta,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": kube, "GitVersion": kube,
				"Major": strings.Split(strings.TrimPrefix(kube, "v"), ".")[0],
				"Minor": strings.Split(kube, ".")[1],
			},
			"APIVersions": apiVersions(splitList(apis)),
		},
		"Files": map[string]interface{}{},
	}
	paths, err := filepath.Glob(filepath.Join(chart, "templates", "*"))
	if err != nil {
		return "", err
	}
	sort.Strings(paths)
	set := template.New(chartName).Option("missingkey=zero")
	set.Funcs(funcMap(set))
	var rendered []string
	for _, path := range paths {
		base := filepath.Base(path)
		if !strings.HasSuffix(base, ".yaml") && !strings.HasSuffix(base, ".tpl") &&
			!strings.HasSuffix(base, ".txt") {
			continue
		}
		text, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		tname := chartName + "/templates/" + base
		if _, err := set.New(tname).Parse(string(text)); err != nil {
			return "", err
		}
		if !strings.HasPrefix(base, "_") && strings.HasSuffix(base, ".yaml") {
			rendered = append(rendered, tname)
		}
	}
	var out strings.Builder
	for _, tname := range rendered {
		scope := map[string]interface{}{}
		for k, v := range top {
			scope[k] = v
		}
		scope["Template"] = map[string]interface{}{
			"Name": tname, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := set.ExecuteTemplate(&buf, tname, scope); err != nil {
			return "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.TrimRight(text, "\n"))
	}
	return out.String(), nil
}

func splitList(text string) []string {
	var items []string
	for _, item := range strings.Split(text, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// funcMap is Helm's engine.funcMap: sprig's text functions (less env, expandenv) and
// Helm's own, include and tpl executing within the chart's template set.
func funcMap(set *template.Template) template.FuncMap {
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includes := 0
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includes++; includes > 1000 {
			return "", errors.New("include: too deep (recursive template?)")
		}
		defer func() { includes-- }()
		var buf bytes.Buffer
		if err := set.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := set.Clone()
		if err != nil {
			return "", err
		}
		t, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl: %w", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(msg string, value interface{}) (interface{}, error) {
		if value == nil {
			return nil, errors.New(msg)
		}
		if s, ok := value.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return value, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["fromYaml"] = func(text string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(text), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["fromJson"] = funcs["fromYaml"]
	funcs["lookup"] = func(...string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return funcs
}
