package block_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/block"
)

// thanosMetaJSON is a meta.json as Thanos v0.42's sidecar writes it: Prometheus' block meta, then the
// thanos section, indented with tabs by encoding/json (labels sorted by key, as encoding/json does
// for maps).
const thanosMetaJSON = `{
	"ulid": "01JQ8Z5V9X3W2K7M4N6P8R0T2V",
	"minTime": 1743465600000,
	"maxTime": 1743472800000,
	"stats": {
		"numSamples": 1219200,
		"numSeries": 5080,
		"numChunks": 10160
	},
	"compaction": {
		"level": 1,
		"sources": [
			"01JQ8Z5V9X3W2K7M4N6P8R0T2V"
		]
	},
	"version": 1,
	"thanos": {
		"version": 1,
		"labels": {
			"cluster": "eu1",
			"replica": "a"
		},
		"downsample": {
			"resolution": 0
		},
		"source": "sidecar",
		"segment_files": [
			"000001"
		],
		"files": [
			{
				"rel_path": "chunks/000001",
				"size_bytes": 6510342
			},
			{
				"rel_path": "index",
				"size_bytes": 812345
			},
			{
				"rel_path": "meta.json"
			}
		],
		"index_stats": {
			"series_max_size": 412,
			"chunk_max_size": 1287
		}
	}
}
`

// compactedMetaJSON is a downsampled, compacted, rewritten block with every field lethe keeps
// verbatim.
const compactedMetaJSON = `{
	"ulid": "01JQA0000000000000000000ZZ",
	"minTime": 1743465600000,
	"maxTime": 1744070400000,
	"stats": {
		"numSamples": 7200,
		"numSeries": 12,
		"numChunks": 60
	},
	"compaction": {
		"level": 4,
		"sources": [
			"01JQ8Z5V9X3W2K7M4N6P8R0T2V",
			"01JQ8Z5V9X3W2K7M4N6P8R0T3A"
		],
		"parents": [
			{
				"ulid": "01JQ8Z5V9X3W2K7M4N6P8R0T2V",
				"minTime": 1743465600000,
				"maxTime": 1743472800000
			}
		]
	},
	"version": 1,
	"thanos": {
		"labels": {
			"cluster": "us1",
			"tenant_id": "team-a"
		},
		"downsample": {
			"resolution": 300000
		},
		"source": "compactor",
		"files": [
			{
				"rel_path": "index",
				"size_bytes": 3021,
				"hash": {
					"func": "SHA256",
					"value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
				}
			}
		],
		"rewrites": [
			{
				"sources": [
					"01JQ8Z5V9X3W2K7M4N6P8R0T2V"
				],
				"deletions_applied": [
					{
						"matchers": "{job=\"secret\"}",
						"intervals": [
							{
								"mint": 1743465600000,
								"maxt": 1743469200000
							}
						],
						"request_id": "gdpr-42"
					}
				]
			}
		],
		"index_stats": {
			"series_max_size": 96,
			"chunk_max_size": 700
		},
		"extensions": {
			"x": [
				1,
				2.5,
				"three",
				null,
				true
			]
		}
	}
}
`

// prometheusMetaJSON is a plain Prometheus block's meta.json: no thanos section.
const prometheusMetaJSON = `{
	"ulid": "01JQ8Z5V9X3W2K7M4N6P8R0T2V",
	"minTime": 1000,
	"maxTime": 2000,
	"stats": {
		"numSamples": 10,
		"numSeries": 2,
		"numChunks": 2
	},
	"compaction": {
		"level": 1,
		"sources": [
			"01JQ8Z5V9X3W2K7M4N6P8R0T2V"
		]
	},
	"version": 1
}
`

func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	testutil.Ok(t, json.Unmarshal(b, &v), string(b))
	return v
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	testutil.Ok(t, json.Compact(&buf, b))
	return buf.String()
}

func TestDecodeMeta_ThanosMeta(t *testing.T) {
	m, err := block.DecodeMeta([]byte(thanosMetaJSON))
	testutil.Ok(t, err)

	testutil.Equals(t, ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T2V"), m.ULID)
	testutil.Equals(t, int64(1743465600000), m.MinTime)
	testutil.Equals(t, int64(1743472800000), m.MaxTime)
	testutil.Equals(t, uint64(5080), m.Stats.NumSeries)
	testutil.Equals(t, uint64(1219200), m.Stats.NumSamples)
	testutil.Equals(t, uint64(10160), m.Stats.NumChunks)
	testutil.Equals(t, 1, m.Compaction.Level)
	testutil.Equals(t, []ulid.ULID{m.ULID}, m.Compaction.Sources)
	testutil.Equals(t, 1, m.Version)

	testutil.Assert(t, m.Thanos != nil, "thanos section not decoded")
	testutil.Equals(t, labels.FromStrings("cluster", "eu1", "replica", "a"), m.ExternalLabels())
	testutil.Equals(t, int64(0), m.Resolution())
	testutil.Equals(t, "sidecar", m.Thanos.Source)
	testutil.Equals(t, []string{"000001"}, m.Thanos.SegmentFiles)
	testutil.Equals(t,
		`[{"rel_path":"chunks/000001","size_bytes":6510342},{"rel_path":"index","size_bytes":812345},{"rel_path":"meta.json"}]`,
		compact(t, m.Thanos.Files))
	testutil.Equals(t, `{"series_max_size":412,"chunk_max_size":1287}`, compact(t, m.Thanos.IndexStats))
	testutil.Equals(t, 0, len(m.Thanos.Rewrites))

	// Written back, it is the file Thanos wrote, byte for byte.
	out, err := block.EncodeMeta(m)
	testutil.Ok(t, err)
	testutil.Equals(t, thanosMetaJSON, string(out))
}

func TestEncodeDecodeMeta_RoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         string
		ext        labels.Labels
		resolution int64
		source     string
		// raw fields lethe does not interpret, compacted.
		files, rewrites, indexStats, extensions string
	}{
		{
			name: "sidecar", in: thanosMetaJSON,
			ext: labels.FromStrings("cluster", "eu1", "replica", "a"), resolution: 0, source: "sidecar",
			files:      `[{"rel_path":"chunks/000001","size_bytes":6510342},{"rel_path":"index","size_bytes":812345},{"rel_path":"meta.json"}]`,
			indexStats: `{"series_max_size":412,"chunk_max_size":1287}`,
		},
		{
			name: "compacted, downsampled and rewritten", in: compactedMetaJSON,
			ext: labels.FromStrings("cluster", "us1", "tenant_id", "team-a"), resolution: 300000, source: "compactor",
			files:      `[{"rel_path":"index","size_bytes":3021,"hash":{"func":"SHA256","value":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}]`,
			rewrites:   `[{"sources":["01JQ8Z5V9X3W2K7M4N6P8R0T2V"],"deletions_applied":[{"matchers":"{job=\"secret\"}","intervals":[{"mint":1743465600000,"maxt":1743469200000}],"request_id":"gdpr-42"}]}]`,
			indexStats: `{"series_max_size":96,"chunk_max_size":700}`,
			extensions: `{"x":[1,2.5,"three",null,true]}`,
		},
		{
			name: "plain prometheus", in: prometheusMetaJSON,
			ext: labels.EmptyLabels(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := block.DecodeMeta([]byte(tc.in))
			testutil.Ok(t, err)
			check := func(m *block.Meta) {
				t.Helper()
				testutil.Equals(t, tc.ext, m.ExternalLabels())
				testutil.Equals(t, tc.resolution, m.Resolution())
				if m.Thanos == nil {
					testutil.Equals(t, "", tc.source)
					return
				}
				testutil.Equals(t, tc.source, m.Thanos.Source)
				for _, f := range []struct {
					want string
					got  json.RawMessage
				}{{tc.files, m.Thanos.Files}, {tc.rewrites, m.Thanos.Rewrites}, {tc.indexStats, m.Thanos.IndexStats}, {tc.extensions, m.Thanos.Extensions}} {
					if f.want == "" {
						testutil.Equals(t, 0, len(f.got))
						continue
					}
					testutil.Equals(t, f.want, compact(t, f.got))
				}
			}
			check(m)

			out, err := block.EncodeMeta(m)
			testutil.Ok(t, err)
			// Nothing is lost or added: the JSON values are the same.
			testutil.Equals(t, jsonValue(t, []byte(tc.in)), jsonValue(t, out))
			// Thanos' layout: tab-indented, ending in a newline.
			testutil.Assert(t, strings.HasPrefix(string(out), "{\n\t\"ulid\": "), string(out))
			testutil.Assert(t, strings.HasSuffix(string(out), "}\n"), string(out))

			m2, err := block.DecodeMeta(out)
			testutil.Ok(t, err)
			check(m2)
			testutil.Equals(t, m, m2)
		})
	}
}

func TestMeta_PlainPrometheus(t *testing.T) {
	m, err := block.DecodeMeta([]byte(prometheusMetaJSON))
	testutil.Ok(t, err)
	testutil.Assert(t, m.Thanos == nil, "plain Prometheus block got a thanos section: %+v", m.Thanos)
	testutil.Equals(t, 0, m.ExternalLabels().Len())
	testutil.Equals(t, int64(0), m.Resolution())
	testutil.Equals(t, uint64(2), m.Stats.NumSeries)

	out, err := block.EncodeMeta(m)
	testutil.Ok(t, err)
	testutil.Assert(t, !strings.Contains(string(out), "thanos"), "encoding added a thanos section: %s", out)
	testutil.Equals(t, prometheusMetaJSON, string(out))

	// A thanos section without labels (as old Thanos versions wrote) has no external labels either.
	m, err = block.DecodeMeta([]byte(`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":1,"version":1,"thanos":{"downsample":{"resolution":3600000}}}`))
	testutil.Ok(t, err)
	testutil.Equals(t, 0, m.ExternalLabels().Len())
	testutil.Equals(t, int64(3600000), m.Resolution())
}

func TestDecodeMeta_Errors(t *testing.T) {
	for _, tc := range []struct {
		name, in, errContains string
	}{
		{name: "empty", in: ``, errContains: "decode meta.json"},
		{name: "garbage", in: "\x00\x01garbage{", errContains: "decode meta.json"},
		{name: "truncated", in: thanosMetaJSON[:len(thanosMetaJSON)/2], errContains: "decode meta.json"},
		{name: "array", in: `[1,2,3]`, errContains: "decode meta.json"},
		{name: "bad ulid", in: `{"ulid":"not-a-ulid","minTime":0,"maxTime":1,"version":1}`, errContains: "decode meta.json"},
		{name: "thanos section not an object", in: `{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":1,"version":1,"thanos":"x"}`, errContains: "decode meta.json"},
		{name: "labels not strings", in: `{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":1,"version":1,"thanos":{"labels":{"a":1}}}`, errContains: "decode meta.json"},
		{name: "version 2", in: strings.Replace(prometheusMetaJSON, `"version": 1`, `"version": 2`, 1), errContains: "version 2"},
		{name: "no version", in: `{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":1}`, errContains: "version 0"},
		{name: "no ulid", in: `{"minTime":0,"maxTime":1,"version":1}`, errContains: "no ulid"},
		{name: "zero ulid", in: `{"ulid":"00000000000000000000000000","minTime":0,"maxTime":1,"version":1}`, errContains: "no ulid"},
		{name: "minTime after maxTime", in: `{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":2,"maxTime":1,"version":1}`, errContains: "minTime after maxTime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := block.DecodeMeta([]byte(tc.in))
			testutil.NotOk(t, err)
			testutil.Assert(t, m == nil, "got a meta with an error: %+v", m)
			testutil.Assert(t, strings.Contains(err.Error(), tc.errContains), "error %q does not contain %q", err, tc.errContains)
		})
	}
}

func TestMeta_Overlaps(t *testing.T) {
	// A block's own range is [MinTime, MaxTime); queries are [mint, maxt] inclusive.
	m := &block.Meta{}
	m.MinTime, m.MaxTime = 1000, 2000
	for _, tc := range []struct {
		mint, maxt int64
		want       bool
	}{
		{0, 999, false},
		{0, 1000, true},
		{1000, 1000, true},
		{1500, 1600, true},
		{0, 5000, true},
		{1999, 1999, true},
		{1999, 5000, true},
		{2000, 5000, false},
		{2001, 3000, false},
	} {
		testutil.Equals(t, tc.want, m.Overlaps(tc.mint, tc.maxt), "[%d, %d]", tc.mint, tc.maxt)
	}
}

func TestReadMeta(t *testing.T) {
	ctx := context.Background()
	id := ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T2V")
	other := ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T3A")

	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			testutil.Ok(t, bkt.Upload(ctx, id.String()+"/meta.json", strings.NewReader(thanosMetaJSON)))
			// A meta.json copied into another block's folder.
			testutil.Ok(t, bkt.Upload(ctx, other.String()+"/meta.json", strings.NewReader(thanosMetaJSON)))

			m, err := block.ReadMeta(ctx, bkt, id)
			testutil.Ok(t, err)
			testutil.Equals(t, id, m.ULID)
			testutil.Equals(t, labels.FromStrings("cluster", "eu1", "replica", "a"), m.ExternalLabels())

			_, err = block.ReadMeta(ctx, bkt, other)
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), other.String()) && strings.Contains(err.Error(), id.String()),
				"error should name folder and meta.json ulid: %v", err)

			missing := ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T4B")
			_, err = block.ReadMeta(ctx, bkt, missing)
			testutil.NotOk(t, err)
			testutil.Assert(t, bkt.IsObjNotFoundErr(errors.Cause(err)), "missing meta.json is not a not-found error: %v", err)
		})
	}
}
