package cliflags

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/urfave/cli/v2"
)

// testApp is an app shaped like lethe's: global flags, a command holding subcommands, and a
// subcommand with a positional argument; its actions record what they were given.
func testApp(got *[]string) *cli.App {
	record := func(c *cli.Context) error {
		*got = append(*got, c.Command.Name, "config="+c.String("config"), "level="+c.String("level"), "reason="+c.String("reason"),
			"force="+c.String("force"), "args="+strings.Join(c.Args().Slice(), ","))
		return nil
	}
	var out bytes.Buffer
	return &cli.App{
		Name:           "app",
		Writer:         &out,
		ErrWriter:      &out,
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config"},
			&cli.StringFlag{Name: "level", Aliases: []string{"l"}, Value: "info"},
			&cli.StringFlag{Name: "reason", Value: "global"},
		},
		Commands: []*cli.Command{{
			Name: "tombstone",
			Subcommands: []*cli.Command{
				{Name: "cancel", Action: record, Flags: []cli.Flag{
					&cli.StringFlag{Name: "reason"},
					&cli.BoolFlag{Name: "force"},
					&cli.IntFlag{Name: "n"},
				}},
				{Name: "list", Action: record},
			},
		}},
	}
}

func TestOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"already in order", []string{"app", "--config=c", "tombstone", "cancel", "--reason", "r", "ID"},
			[]string{"app", "--config=c", "tombstone", "cancel", "--reason", "r", "ID"}},
		{"global after the subcommand", []string{"app", "tombstone", "cancel", "--config", "c", "ID"},
			[]string{"app", "--config", "c", "tombstone", "cancel", "ID"}},
		{"global between the commands", []string{"app", "tombstone", "-l=debug", "list"},
			[]string{"app", "-l=debug", "tombstone", "list"}},
		{"flags after the argument", []string{"app", "tombstone", "cancel", "ID", "--reason", "x", "--force", "--config=c"},
			[]string{"app", "--config=c", "tombstone", "cancel", "--reason", "x", "--force", "ID"}},
		{"a value that names a command", []string{"app", "--level", "tombstone", "tombstone", "list"},
			[]string{"app", "--level", "tombstone", "tombstone", "list"}},
		{"a value that looks like a flag", []string{"app", "tombstone", "cancel", "ID", "--reason", "--force"},
			[]string{"app", "tombstone", "cancel", "--reason", "--force", "ID"}},
		{"a bool takes no value", []string{"app", "tombstone", "cancel", "--force", "ID"},
			[]string{"app", "tombstone", "cancel", "--force", "ID"}},
		{"after --, all are arguments", []string{"app", "tombstone", "cancel", "--", "-ID", "--reason"},
			[]string{"app", "tombstone", "cancel", "--", "-ID", "--reason"}},
		{"help goes to the innermost command", []string{"app", "--help", "tombstone", "cancel"},
			[]string{"app", "tombstone", "cancel", "--help"}},
		{"the help command", []string{"app", "tombstone", "help", "cancel"},
			[]string{"app", "tombstone", "help", "cancel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			out, err := Order(testApp(&got), tc.args)
			testutil.Ok(t, err)
			testutil.Equals(t, tc.want, out)
		})
	}
}

func TestRunGivesEachCommandItsFlags(t *testing.T) {
	for _, args := range [][]string{
		{"app", "--config=c", "--level", "debug", "tombstone", "cancel", "--reason", "r", "--force", "ID"},
		{"app", "tombstone", "cancel", "ID", "--level", "debug", "--force", "--config=c", "--reason=r"},
		{"app", "tombstone", "-l", "debug", "cancel", "ID", "--reason", "r", "--config", "c", "--force=true"},
	} {
		var got []string
		testutil.Ok(t, Run(context.Background(), testApp(&got), args))
		// The subcommand's --reason hides the global one.
		testutil.Equals(t, []string{"cancel", "config=c", "level=debug", "reason=r", "force=true", "args=ID"}, got, "args %q", args)
	}
	var got []string
	testutil.Ok(t, Run(context.Background(), testApp(&got), []string{"app", "tombstone", "list", "--reason", "g"}))
	testutil.Equals(t, []string{"list", "config=", "level=info", "reason=g", "force=", "args="}, got)
}

func TestRunRefusesBadInputInOneError(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"app", "tombstone", "cancel", "ID", "--foo"}, "flag provided but not defined: -foo"},
		{[]string{"app", "--foo=1", "tombstone", "list"}, "flag provided but not defined: -foo"},
		// A subcommand's flag is not the app's: it goes after the subcommand's name.
		{[]string{"app", "--force", "tombstone", "cancel", "ID"}, "flag provided but not defined: -force"},
		{[]string{"app", "tombstone", "list", "--force"}, "flag provided but not defined: -force"},
		{[]string{"app", "tombstone", "cancel", "---x"}, "bad flag syntax: ---x"},
		{[]string{"app", "tombstone", "cancel", "ID", "--n", "abc"}, `invalid value "abc" for flag -n`},
		{[]string{"app", "tombstone", "cancel", "ID", "--reason"}, "flag needs an argument: -reason"},
		{[]string{"app", "tombstone", "lst"}, `unknown command "lst": want cancel, list`},
		{[]string{"app", "tombstne", "list"}, `unknown command "tombstne": want tombstone`},
	} {
		var got []string
		app := testApp(&got)
		err := Run(context.Background(), app, tc.args)
		testutil.NotOk(t, err, "args %q", tc.args)
		testutil.Assert(t, strings.HasPrefix(err.Error(), tc.want), "args %q: want %q, got %q", tc.args, tc.want, err)
		testutil.Equals(t, "", app.Writer.(*bytes.Buffer).String(), "printed help for %q", tc.args)
		testutil.Equals(t, 0, len(got), "ran a command for %q", tc.args)
	}
}

func TestHelpListsInheritedFlags(t *testing.T) {
	var got []string
	app := testApp(&got)
	testutil.Ok(t, Run(context.Background(), app, []string{"app", "tombstone", "cancel", "--help"}))
	help := app.Writer.(*bytes.Buffer).String()
	own, global, ok := strings.Cut(help, "GLOBAL OPTIONS:")
	testutil.Assert(t, ok, "no global options in: %s", help)
	testutil.Assert(t, strings.Contains(own, "--force"), help)
	testutil.Assert(t, strings.Contains(global, "--config value"), help)
	testutil.Assert(t, strings.Contains(global, "--level value, -l value"), help)
	// The subcommand's own --reason hides the global one.
	testutil.Assert(t, !strings.Contains(global, "--reason"), help)
	testutil.Equals(t, 0, len(got))
}
