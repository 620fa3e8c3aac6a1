// Package e2e runs lethe's binaries, built once per test run, against real TSDB blocks in real
// buckets.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var binaries struct {
	lethe string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lethe-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binaries.lethe = filepath.Join(dir, "lethe")
	build := exec.Command("go", "build", "-o", binaries.lethe, "github.com/lethe-project/lethe/cmd/lethe")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lethe:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
