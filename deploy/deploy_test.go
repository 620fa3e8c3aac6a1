// Package deploy holds the container image's and the Kubernetes manifests' tests: no docker engine
// or cluster is needed, the binaries are built as the Dockerfile builds them, and the manifests
// are rendered as `kubectl apply -k` renders them, then held against the binaries' own --help.
package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
)

// TestDeploy builds the image's binaries once and checks the Dockerfile, the manifests and the
// Grafana data source against them.
func TestDeploy(t *testing.T) {
	root := repoRoot(t)
	img := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	bins := buildImageBinaries(t, root, img)

	t.Run("dockerfile", func(t *testing.T) { checkDockerfile(t, root, img, bins) })
	t.Run("dockerignore", func(t *testing.T) { checkDockerignore(t, root, img) })
	t.Run("kubernetes", func(t *testing.T) { checkKubernetes(t, root, img, bins) })
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	testutil.Ok(t, err)
	gomod := strings.TrimSpace(string(out))
	testutil.Assert(t, gomod != "" && gomod != os.DevNull, "not inside the module")
	return filepath.Dir(gomod)
}

// binary is one built binary of the image with the flags and commands its --help lists.
type binary struct {
	name string
	path string
}

// help is what one `--help` lists.
type help struct {
	flags    map[string]flagHelp
	commands map[string]bool
}

type flagHelp struct {
	def string // The default, as --help shows it; "" when it shows none.
}

// help runs the binary's --help, or the subcommand's with args such as "run".
func (b binary) help(t *testing.T, args ...string) help {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(b.path, append(args, "--help")...)
	cmd.Stdout, cmd.Stderr = &out, &out
	testutil.Ok(t, cmd.Run(), "%s %v --help: %s", b.name, args, out.String())
	return parseHelp(out.String())
}

var helpDefault = regexp.MustCompile(`\(default: "?(.*?)"?\)`)

// parseHelp reads urfave/cli's help: the OPTIONS / GLOBAL OPTIONS and COMMANDS sections.
func parseHelp(s string) help {
	h := help{flags: map[string]flagHelp{}, commands: map[string]bool{}}
	section := ""
	for _, line := range strings.Split(s, "\n") {
		if line != "" && line[0] != ' ' {
			section = strings.TrimSpace(line)
			continue
		}
		spec, rest, _ := strings.Cut(strings.TrimSpace(line), "  ")
		if spec == "" {
			continue
		}
		switch section {
		case "OPTIONS:", "GLOBAL OPTIONS:":
			var def string
			if m := helpDefault.FindStringSubmatch(rest); m != nil {
				def = m[1]
			}
			for _, alt := range strings.Split(spec, ", ") {
				name, _, _ := strings.Cut(alt, " ")
				if name = strings.TrimLeft(name, "-"); name != "" {
					h.flags[name] = flagHelp{def: def}
				}
			}
		case "COMMANDS:":
			for _, alt := range strings.Split(spec, ", ") {
				h.commands[alt] = true
			}
		}
	}
	return h
}

func TestParseHelp(t *testing.T) {
	h := parseHelp(`NAME:
   x - y

COMMANDS:
   plan     print the jobs
   help, h  Shows a list of commands

OPTIONS:
   --output value, -o value  Output format: table or json. (default: "table")
   --upstream.header value [ --upstream.header value ]  Header sent.
   --dry-run                Change nothing. (default: false)
   --help, -h               show help
`)
	testutil.Equals(t, map[string]bool{"plan": true, "help": true, "h": true}, h.commands)
	testutil.Equals(t, map[string]flagHelp{
		"output": {def: "table"}, "o": {def: "table"}, "upstream.header": {}, "dry-run": {def: "false"},
		"help": {}, "h": {},
	}, h.flags)
}
