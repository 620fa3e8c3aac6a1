//go:build tools

// Package tools records the Thanos command this module builds.
package tools

import _ "github.com/thanos-io/thanos/cmd/thanos"
