package tombstones

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
)

const redactionAlgorithm = "hmac-sha256"

// RedactionKeyObject is where the bucket's redaction key lives when no key file is used.
const RedactionKeyObject = Prefix + "redaction.key"

// minKeyLen is the shortest key accepted: 128 bits.
const minKeyLen = 16

// RedactionKey turns label values into digests. One key serves a whole bucket, so a label value is
// hashed once per lookup, not once per tombstone. A key kept outside the bucket (a key file) is what
// protects low-entropy values such as user ids from a brute-force search by whoever reads the bucket.
type RedactionKey struct {
	id   string
	pool sync.Pool // of *hasher
}

// hasher is one HMAC with the buffers a digest needs, so hashing allocates nothing.
type hasher struct {
	mac hash.Hash
	in  []byte
	out [sha256.Size]byte
}

// NewRedactionKey builds a key from raw key material (at least 16 bytes).
func NewRedactionKey(material []byte) (*RedactionKey, error) {
	material = bytes.TrimSpace(material)
	if len(material) < minKeyLen {
		return nil, errors.Newf("redaction key must be at least %d bytes, got %d", minKeyLen, len(material))
	}
	key := append([]byte(nil), material...)
	idSum := sha256.Sum256(append([]byte("lethe key id\x00"), key...))
	k := &RedactionKey{id: hex.EncodeToString(idSum[:8])}
	k.pool.New = func() any { return &hasher{mac: hmac.New(sha256.New, key)} }
	return k, nil
}

// ReadRedactionKeyFile reads a key kept outside the bucket.
func ReadRedactionKeyFile(path string) (*RedactionKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, errors.Wrap(err, "read redaction key file")
	}
	k, err := NewRedactionKey(b)
	if err != nil {
		return nil, errors.Wrapf(err, "redaction key file %s", path)
	}
	return k, nil
}

// ID names the key without revealing it; tombstones record it.
func (k *RedactionKey) ID() string { return k.id }

// Digest returns the hex digest stored in place of value for the label name.
func (k *RedactionKey) Digest(name, value string) string {
	var buf [sha256.Size]byte
	return hex.EncodeToString(k.sum(name, value, buf[:0]))
}

// sum appends the raw digest of the label name and value to dst.
func (k *RedactionKey) sum(name, value string, dst []byte) []byte {
	h := k.pool.Get().(*hasher)
	h.mac.Reset()
	h.in = append(append(append(h.in[:0], name...), 0xff), value...)
	_, _ = h.mac.Write(h.in)
	dst = append(dst, h.mac.Sum(h.out[:0])...)
	k.pool.Put(h)
	return dst
}

// isRedactable reports whether --redact replaces the matcher's value by a digest: equality matchers
// on any label but the metric name.
func isRedactable(m *labels.Matcher) bool {
	return m.Type == labels.MatchEqual && m.Name != model.MetricNameLabel && m.Value != ""
}

// redactSelectors rewrites selectors so that the values of equality matchers become digests. It
// refuses regular expressions on labels other than __name__, which would keep the value in plain
// text.
func redactSelectors(sels [][]*labels.Matcher, key *RedactionKey) ([]string, error) {
	out := make([]string, 0, len(sels))
	for _, sel := range sels {
		ms := make([]*labels.Matcher, 0, len(sel))
		for _, m := range sel {
			switch {
			case isRedactable(m):
				ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, m.Name, key.Digest(m.Name, m.Value)))
			case m.Name == model.MetricNameLabel || m.Value == "":
				ms = append(ms, m)
			default:
				return nil, errors.Newf("--redact supports only equality matchers (and any matcher on __name__): %s would store its value in plain text", m.Name+m.Type.String()+"<value>")
			}
		}
		out = append(out, selectorString(ms))
	}
	return out, nil
}

// LoadOrCreateBucketKey returns the bucket's redaction key, creating one if the bucket has none.
// objstore has no conditional writes, so two processes creating the key at the same moment could
// each write one; the key is read back after writing and the stored one is used, and tombstones
// record the key id, so a tombstone under a lost key is reported rather than silently unmatched.
func LoadOrCreateBucketKey(ctx context.Context, bkt objstore.Bucket) (*RedactionKey, error) {
	k, err := LoadBucketKey(ctx, bkt)
	if err == nil || !bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return k, err
	}
	material := make([]byte, 32)
	if _, err := rand.Read(material); err != nil {
		return nil, errors.Wrap(err, "generate redaction key")
	}
	if err := bkt.Upload(ctx, RedactionKeyObject, strings.NewReader(hex.EncodeToString(material))); err != nil {
		return nil, errors.Wrap(err, "upload redaction key")
	}
	return LoadBucketKey(ctx, bkt)
}

// LoadBucketKey reads the bucket's redaction key; it returns the bucket's not-found error if there is none.
func LoadBucketKey(ctx context.Context, bkt objstore.BucketReader) (*RedactionKey, error) {
	rc, err := bkt.Get(ctx, RedactionKeyObject)
	if err != nil {
		return nil, errors.Wrap(err, "get redaction key")
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, errors.Wrap(err, "read redaction key")
	}
	return NewRedactionKey(b)
}

// ReaderKey returns the key that readers of tombstones (the proxy, the rewriter) match redacted
// tombstones with: the one in keyFile if it is given, else the bucket's, else nil when the bucket
// has none (then no tombstone can be redacted with the bucket's key).
func ReaderKey(ctx context.Context, bkt objstore.BucketReader, keyFile string) (*RedactionKey, error) {
	if keyFile != "" {
		return ReadRedactionKeyFile(keyFile)
	}
	k, err := LoadBucketKey(ctx, bkt)
	if err != nil && bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return nil, nil
	}
	return k, err
}
