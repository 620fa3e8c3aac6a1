package deploy

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"go/version"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
)

// imageBinaries are the binaries the image must hold, each built from ./cmd/<name>.
var imageBinaries = []string{"lethe", "lethe-proxy", "lethe-rewriter"}

// dockerfile is a parsed Dockerfile: its stages and what the checks need from them.
type dockerfile struct {
	stages []stage
	args   map[string]string // ARG defaults.

	goBuild goBuild
	// binaries maps a binary's name to its path in the final image.
	binaries map[string]string
}

type stage struct {
	from, name string
	instrs     []instruction
}

type instruction struct {
	cmd, args string
	line      int
}

// goBuild is the one `go build` the Dockerfile runs.
type goBuild struct {
	stage    string
	env      []string // Assignments before `go`, as NAME=value with ARGs substituted.
	flags    []string // Flags of `go build`, -o and its value left out.
	outDir   string   // The -o directory.
	packages []string
}

func parseDockerfile(t *testing.T, file string) *dockerfile {
	t.Helper()
	f, err := os.Open(file)
	testutil.Ok(t, err)
	defer f.Close()

	d := &dockerfile{args: map[string]string{}}
	var cont strings.Builder
	start, n := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cont.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cont.Len() == 0 {
			start = n
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cont.WriteString(s + " ")
			continue
		}
		cont.WriteString(line)
		cmd, args, _ := strings.Cut(cont.String(), " ")
		cont.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		switch in.cmd {
		case "FROM":
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			d.stages = append(d.stages, s)
			continue
		case "ARG":
			name, def, _ := strings.Cut(in.args, "=")
			d.args[name] = def
		}
		testutil.Assert(t, len(d.stages) > 0 || in.cmd == "ARG", "Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
		if len(d.stages) > 0 {
			s := &d.stages[len(d.stages)-1]
			s.instrs = append(s.instrs, in)
		}
	}
	testutil.Ok(t, sc.Err())
	testutil.Assert(t, len(d.stages) >= 2, "Dockerfile: want a builder stage and a final stage, got %d stages", len(d.stages))

	d.goBuild = findGoBuild(t, d)
	d.binaries = finalBinaries(t, d)
	return d
}

var shellVar = regexp.MustCompile(`\$\{?(\w+)\}?`)

// findGoBuild finds the one RUN that calls `go build` and reads its environment and arguments.
func findGoBuild(t *testing.T, d *dockerfile) goBuild {
	t.Helper()
	var found []goBuild
	for _, s := range d.stages {
		for _, in := range s.instrs {
			if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
				continue
			}
			words := shellWords(t, in.args)
			b := goBuild{stage: s.name}
			i := 0
			for ; i < len(words) && strings.Contains(words[i], "=") && !strings.HasPrefix(words[i], "-"); i++ {
				b.env = append(b.env, shellVar.ReplaceAllStringFunc(words[i], func(v string) string {
					return d.args[shellVar.FindStringSubmatch(v)[1]]
				}))
			}
			testutil.Assert(t, i+1 < len(words) && words[i] == "go" && words[i+1] == "build",
				"Dockerfile:%d: want `[NAME=value ...] go build ...` alone in the RUN, got %q", in.line, in.args)
			for rest := words[i+2:]; len(rest) > 0; rest = rest[1:] {
				w := rest[0]
				switch {
				case w == "-o" && len(rest) > 1:
					b.outDir, rest = rest[1], rest[1:]
				case strings.HasPrefix(w, "-o="):
					b.outDir = strings.TrimPrefix(w, "-o=")
				case strings.HasPrefix(w, "-"):
					testutil.Assert(t, strings.Contains(w, "=") || !slices.Contains([]string{"-ldflags", "-gcflags", "-tags", "-asmflags", "-mod", "-p"}, w),
						"Dockerfile:%d: write %s=value as one word", in.line, w)
					b.flags = append(b.flags, w)
				default:
					b.packages = append(b.packages, w)
				}
			}
			found = append(found, b)
		}
	}
	testutil.Equals(t, 1, len(found), "Dockerfile: want exactly one RUN with `go build`")
	return found[0]
}

// shellWords splits a command line as sh does for plain words and quoted strings.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	quote := rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case r == ';' || r == '&' || r == '|':
			t.Fatalf("Dockerfile: the go build RUN must be one command, got %q", s)
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	testutil.Assert(t, quote == 0, "Dockerfile: unclosed quote in %q", s)
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// finalBinaries reads the final stage's COPY --from=<builder> of the built binaries.
func finalBinaries(t *testing.T, d *dockerfile) map[string]string {
	t.Helper()
	bins := map[string]string{}
	for _, in := range d.stages[len(d.stages)-1].instrs {
		if in.cmd != "COPY" {
			continue
		}
		f := strings.Fields(in.args)
		if len(f) < 3 || f[0] != "--from="+d.goBuild.stage {
			continue
		}
		dest := f[len(f)-1]
		testutil.Assert(t, len(f) == 3 || strings.HasSuffix(dest, "/"), "Dockerfile:%d: several sources need a directory (ending in /) as destination", in.line)
		for _, src := range f[1 : len(f)-1] {
			testutil.Equals(t, path.Clean(d.goBuild.outDir), path.Dir(src), "Dockerfile:%d: %s is not one of go build's outputs", in.line, src)
			to := dest
			if strings.HasSuffix(dest, "/") {
				to = path.Join(dest, path.Base(src))
			}
			bins[path.Base(src)] = to
		}
	}
	return bins
}

// buildImageBinaries runs the Dockerfile's `go build`, with its environment and flags, into a
// temporary directory in place of its -o.
func buildImageBinaries(t *testing.T, root string, d *dockerfile) map[string]binary {
	t.Helper()
	dir := t.TempDir()
	args := append(append([]string{"build"}, d.goBuild.flags...), "-o", dir+string(filepath.Separator))
	cmd := exec.Command("go", append(args, d.goBuild.packages...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), d.goBuild.env...)
	out, err := cmd.CombinedOutput()
	testutil.Ok(t, err, "go %v: %s", args, out)

	bins := map[string]binary{}
	for _, pkg := range d.goBuild.packages {
		name := path.Base(pkg)
		bins[name] = binary{name: name, path: filepath.Join(dir, name)}
	}
	return bins
}

var golangImage = regexp.MustCompile(`^golang:(\d+\.\d+(?:\.\d+)?)`)

func checkDockerfile(t *testing.T, root string, d *dockerfile, bins map[string]binary) {
	want := make([]string, 0, len(imageBinaries))
	for _, b := range imageBinaries {
		want = append(want, "./cmd/"+b)
	}
	testutil.Equals(t, want, d.goBuild.packages, "the go build's packages")
	testutil.Assert(t, slices.Contains(d.goBuild.env, "CGO_ENABLED=0"), "the go build must run with CGO_ENABLED=0, got %v", d.goBuild.env)
	gotBins := make([]string, 0, len(d.binaries))
	for name := range d.binaries {
		gotBins = append(gotBins, name)
	}
	slices.Sort(gotBins)
	testutil.Equals(t, imageBinaries, gotBins, "binaries copied into the final image")

	// The builder's Go is at least the one go.mod asks for, or the build downloads a toolchain.
	var builder *stage
	for i := range d.stages {
		if d.stages[i].name == d.goBuild.stage {
			builder = &d.stages[i]
		}
	}
	testutil.Assert(t, builder != nil && d.goBuild.stage != "", "the go build must run in a named stage")
	m := golangImage.FindStringSubmatch(builder.from)
	testutil.Assert(t, m != nil, "builder stage: want FROM golang:<version>, got %s", builder.from)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	testutil.Ok(t, err)
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	testutil.Assert(t, goLine != nil, "go.mod has no go line")
	testutil.Assert(t, version.Compare("go"+m[1], "go"+string(goLine[1])) >= 0, "builder %s is older than go.mod's go %s", builder.from, goLine[1])

	final := d.stages[len(d.stages)-1]
	testutil.Assert(t, final.from == "scratch" || regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?([:@].*)?$`).MatchString(final.from),
		"final stage: want FROM scratch or gcr.io/distroless/static, got %s", final.from)
	var user string
	for _, in := range final.instrs {
		testutil.Assert(t, in.cmd != "RUN", "Dockerfile:%d: RUN in the final stage; its base has no shell", in.line)
		if in.cmd == "USER" {
			user = in.args
		}
		if in.cmd == "ENTRYPOINT" {
			var ep []string
			testutil.Ok(t, json.Unmarshal([]byte(in.args), &ep), "Dockerfile:%d: ENTRYPOINT in exec (JSON) form", in.line)
			testutil.Assert(t, len(ep) > 0 && slices.Contains(mapValues(d.binaries), ep[0]), "Dockerfile:%d: ENTRYPOINT %v is none of the image's binaries", in.line, ep)
		}
	}
	testutil.Assert(t, regexp.MustCompile(`^[1-9]\d*(:[1-9]\d*)?$`).MatchString(user), "final stage: want a numeric non-root USER uid[:gid], got %q", user)

	for _, b := range bins {
		f, err := elf.Open(b.path)
		testutil.Ok(t, err)
		for _, p := range f.Progs {
			testutil.Assert(t, p.Type != elf.PT_INTERP, "%s is dynamically linked (has an interpreter)", b.name)
		}
		libs, err := f.ImportedLibraries()
		testutil.Ok(t, err)
		testutil.Equals(t, 0, len(libs), "%s links shared libraries", b.name)
		testutil.Ok(t, f.Close())
	}
}

func mapValues(m map[string]string) []string {
	vs := make([]string, 0, len(m))
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}

// checkDockerignore checks that the build context keeps every file the go build reads: go.mod,
// go.sum, the module's packages the binaries import and the files they embed.
func checkDockerignore(t *testing.T, root string, d *dockerfile) {
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	testutil.Ok(t, err)
	var patterns []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		testutil.Assert(t, !strings.HasPrefix(line, "!") && !strings.Contains(line, "**"), ".dockerignore: %q: this test reads plain patterns only", line)
		_, err := filepath.Match(line, "x")
		testutil.Ok(t, err, ".dockerignore: %q", line)
		patterns = append(patterns, strings.Trim(line, "/"))
	}

	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles \",\"}}|{{join .EmbedFiles \",\"}}{{end}}{{end}}"}, d.goBuild.packages...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), d.goBuild.env...)
	out, err := cmd.Output()
	testutil.Ok(t, err)
	needed := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		testutil.Equals(t, 3, len(parts), "go list line %q", line)
		rel, err := filepath.Rel(root, parts[0])
		testutil.Ok(t, err)
		for _, f := range strings.Split(parts[1]+","+parts[2], ",") {
			if f != "" {
				needed = append(needed, filepath.ToSlash(filepath.Join(rel, f)))
			}
		}
	}
	testutil.Assert(t, len(needed) > 10, "go list found only %v", needed)
	for _, f := range needed {
		for p := f; p != "."; p = path.Dir(p) {
			for _, pat := range patterns {
				ok, _ := path.Match(pat, p)
				testutil.Assert(t, !ok, ".dockerignore pattern %q leaves %s out of the build context", pat, f)
			}
		}
	}
}
