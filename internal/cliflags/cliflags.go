// Package cliflags lets the flags of a urfave/cli app be given anywhere on its command line, as
// Thanos' and promtool's CLIs (kingpin) take them: the app's global flags before or after the
// subcommand, and any flag after a command's arguments ("lethe tombstone cancel ID --reason x").
//
// urfave/cli/v2 reads a command's flags only between the command's name and its first argument,
// and the app's flags only before the first command. Run moves every flag of the command line to
// the command that defines it, found from the app's own flag definitions, before urfave/cli
// parses it; an unknown flag is one line of error, not the whole help.
package cliflags

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/efficientgo/core/errors"
	"github.com/urfave/cli/v2"
)

// Run runs app on args (args[0] is the program name) with every flag moved to the command that
// defines it. It also makes a usage error (a bad flag value) one error returned to the caller
// instead of help printed on stdout, and makes the help of each command list the flags it
// inherits from the commands above it.
func Run(ctx context.Context, app *cli.App, args []string) error {
	ordered, err := Order(app, args)
	if err != nil {
		return err
	}
	returnUsageErrors(app)
	listInherited(app.Commands, app.Flags)
	return app.RunContext(ctx, ordered)
}

// level is one command of the command line: the app itself or a (sub)command.
type level struct {
	word     string // The word that named the command; empty for the app.
	flags    []cli.Flag
	commands []*cli.Command
	// runs tells whether the command does something itself, or only holds subcommands.
	runs bool
	args []string // The flags given for this command, with their values.
}

// Order returns args with every flag placed right after the command that defines it, in the
// order given, and the positional arguments last. A flag is looked up from the command the
// command line has reached outwards to the app, so that a command's own flag hides a global one
// of the same name. Like Go's flag package, a flag that takes a value takes the next argument
// unless written --name=value, and "--" ends the flags.
func Order(app *cli.App, args []string) ([]string, error) {
	if len(args) == 0 {
		return args, nil
	}
	root := &level{flags: app.Flags, commands: app.Commands, runs: app.Action != nil}
	if app.Version != "" && !app.HideVersion && cli.VersionFlag != nil {
		root.flags = append(slices.Clip(root.flags), cli.VersionFlag)
	}
	levels := []*level{root}
	hideHelp := app.HideHelp
	var positional, help []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		name, inline, isFlag, err := parseFlag(a)
		if err != nil {
			return nil, err
		}
		if isFlag {
			lv, f := definition(levels, name, hideHelp)
			if f == nil {
				return nil, errors.Newf("flag provided but not defined: -%s", name)
			}
			if f == cli.HelpFlag {
				// It shows the help of the innermost command, wherever it was given.
				help = append(help, a)
				continue
			}
			lv.args = append(lv.args, a)
			if inline || !takesValue(f) {
				continue
			}
			if i+1 == len(args) {
				// Moved before the arguments, it would take one of them as its value.
				return nil, errors.Newf("flag needs an argument: -%s", name)
			}
			i++
			lv.args = append(lv.args, args[i])
			continue
		}
		last := levels[len(levels)-1]
		if len(positional) == 0 {
			if cmd := command(last.commands, a); cmd != nil {
				levels = append(levels, &level{word: a, flags: cmd.Flags, commands: cmd.Subcommands, runs: cmd.Action != nil})
				hideHelp = cmd.HideHelp
				continue
			}
			if len(last.commands) > 0 && !last.runs && !(slices.Contains(helpCommand, a) && !hideHelp) {
				return nil, errors.Newf("unknown command %q: want %s", a, names(last.commands))
			}
		}
		positional = append(positional, a)
	}
	out := []string{args[0]}
	for i, lv := range levels {
		if i > 0 {
			out = append(out, lv.word)
		}
		out = append(out, lv.args...)
	}
	out = append(out, help...)
	if slices.ContainsFunc(positional, func(p string) bool { return strings.HasPrefix(p, "-") }) {
		out = append(out, "--")
	}
	return append(out, positional...), nil
}

// parseFlag tells whether a is a flag, as Go's flag package reads it, and returns its name and
// whether its value is inline (--name=value).
func parseFlag(a string) (name string, inline, isFlag bool, err error) {
	if len(a) < 2 || a[0] != '-' {
		return "", false, false, nil
	}
	name = strings.TrimPrefix(a[1:], "-")
	if name == "" || name[0] == '-' || name[0] == '=' {
		return "", false, false, errors.Newf("bad flag syntax: %s", a)
	}
	name, _, inline = strings.Cut(name, "=")
	return name, inline, true, nil
}

// definition finds the flag called name, from the innermost command of levels outwards, or else
// the help flag.
func definition(levels []*level, name string, hideHelp bool) (*level, cli.Flag) {
	for i := len(levels) - 1; i >= 0; i-- {
		for _, f := range levels[i].flags {
			if slices.Contains(f.Names(), name) {
				return levels[i], f
			}
		}
	}
	if !hideHelp && cli.HelpFlag != nil && slices.Contains(cli.HelpFlag.Names(), name) {
		return nil, cli.HelpFlag
	}
	return nil, nil
}

func takesValue(f cli.Flag) bool {
	if d, ok := f.(cli.DocGenerationFlag); ok {
		return d.TakesValue()
	}
	return true
}

// helpCommand names the command urfave/cli adds to every command that has subcommands.
var helpCommand = []string{"help", "h"}

func names(cmds []*cli.Command) string {
	var out []string
	for _, c := range cmds {
		if !c.Hidden {
			out = append(out, c.Name)
		}
	}
	return strings.Join(out, ", ")
}

func command(cmds []*cli.Command, word string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(word) {
			return c
		}
	}
	return nil
}

// returnUsageErrors makes urfave/cli return a usage error (a flag value that does not parse)
// instead of printing it with the whole help.
func returnUsageErrors(app *cli.App) {
	pass := func(_ *cli.Context, err error, _ bool) error { return err }
	if app.OnUsageError == nil {
		app.OnUsageError = pass
	}
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			if c.OnUsageError == nil {
				c.OnUsageError = pass
			}
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
}

// listInherited adds to the help of each command the visible flags it inherits: those of the
// commands above it that it does not define itself.
func listInherited(cmds []*cli.Command, inherited []cli.Flag) {
	for _, c := range cmds {
		var own []string
		for _, f := range c.Flags {
			own = append(own, f.Names()...)
		}
		var shown []cli.Flag
		for _, f := range inherited {
			if v, ok := f.(cli.VisibleFlag); ok && !v.IsVisible() {
				continue
			}
			if !slices.ContainsFunc(f.Names(), func(n string) bool { return slices.Contains(own, n) }) {
				shown = append(shown, f)
			}
		}
		if c.CustomHelpTemplate == "" && len(shown) > 0 {
			c.CustomHelpTemplate = helpTemplate(c, shown)
		}
		listInherited(c.Subcommands, append(slices.Clip(shown), c.Flags...))
	}
}

// helpTemplate is urfave/cli's help template for c followed by a GLOBAL OPTIONS section of flags,
// written into the template as constants.
func helpTemplate(c *cli.Command, flags []cli.Flag) string {
	var b strings.Builder
	if len(c.Subcommands) == 0 {
		b.WriteString(cli.CommandHelpTemplate)
	} else {
		b.WriteString(cli.SubcommandHelpTemplate)
	}
	b.WriteString("\nGLOBAL OPTIONS:")
	for _, f := range flags {
		b.WriteString("\n   {{wrap " + strconv.Quote(f.String()) + " 6}}")
	}
	b.WriteString("\n")
	return b.String()
}
