package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/urfave/cli/v2"

	"github.com/lethe-project/lethe/tombstones"
)

func outputFormat(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case "table", "json":
		return f, nil
	default:
		return "", errors.Newf("--output %q: want table or json", f)
	}
}

// listing is the JSON shape of list: tombstones, and objects that could not be read.
type listing struct {
	Tombstones []tombstones.View   `json:"tombstones"`
	Broken     []tombstones.Broken `json:"broken"`
}

// printEntries writes entries as a table (one row each, or one block of fields each when detail is
// set) or as JSON (an object for a single detailed entry, a listing otherwise).
func printEntries(w io.Writer, format string, entries []*tombstones.Entry, broken []tombstones.Broken, now time.Time, detail bool) error {
	views := make([]tombstones.View, 0, len(entries))
	for _, e := range entries {
		views = append(views, tombstones.NewView(e, now))
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if detail && len(views) == 1 {
			return enc.Encode(views[0])
		}
		if broken == nil {
			broken = []tombstones.Broken{}
		}
		return enc.Encode(listing{Tombstones: views, Broken: broken})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if detail {
		for _, v := range views {
			rows := [][2]string{
				{"id", v.ID}, {"state", string(v.State)}, {"matchers", strings.Join(v.Matchers, " or ")},
				{"start", v.Start}, {"end", v.End}, {"created", stamp(v.CreatedAt)},
				{"undelete until", stamp(v.UndeleteUntil)}, {"deadline", stamp(v.Deadline)},
				{"overdue", fmt.Sprint(v.Overdue)}, {"redacted", fmt.Sprint(v.Redacted)},
				{"author", v.Author}, {"reason", v.Reason},
			}
			if c := v.Cancellation; c != nil {
				rows = append(rows, [2]string{"cancelled", fmt.Sprintf("%s by %s: %s", stamp(c.CreatedAt), c.Author, c.Reason)})
			}
			if a := v.Applied; a != nil {
				rows = append(rows, [2]string{"applied", fmt.Sprintf("%s (%d blocks replaced)", stamp(a.CreatedAt), len(a.Blocks))})
			}
			for _, r := range rows {
				fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
			}
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "ID\tSTATE\tMATCHERS\tSTART\tEND\tUNDELETE UNTIL\tDEADLINE\tAUTHOR\tREASON")
	for _, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.State, strings.Join(v.Matchers, " or "),
			v.Start, v.End, stamp(v.UndeleteUntil), stamp(v.Deadline), v.Author, v.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, b := range broken {
		fmt.Fprintf(w, "unusable object %s: %s\n", b.Object, b.Err)
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
