package proxy

import (
	"bufio"
	"crypto/subtle"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/efficientgo/core/errors"
)

// AdminTokenName is the name the audit log gives the caller of Config.AdminToken, and of a token
// file that holds one bare token.
const AdminTokenName = "admin"

// minTokenLength is the shortest token a token file may hold.
const minTokenLength = 16

// ReadTokenFile reads bearer tokens by name: either one bare token, named "admin", or one
// `name:token` line per token. Blank lines and lines starting with # are skipped.
func ReadTokenFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Wrap(err, "read token file")
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, errors.Wrapf(err, "read token file %s", path)
	}
	return parseTokens(path, lines)
}

func parseTokens(path string, lines []string) (map[string]string, error) {
	if len(lines) == 0 {
		return nil, errors.Newf("token file %s holds no token", path)
	}
	if len(lines) == 1 && !strings.Contains(lines[0], ":") {
		lines[0] = AdminTokenName + ":" + lines[0]
	}
	tokens := make(map[string]string, len(lines))
	seen := map[string]string{}
	for i, l := range lines {
		name, token, ok := strings.Cut(l, ":")
		name, token = strings.TrimSpace(name), strings.TrimSpace(token)
		switch {
		case !ok || name == "":
			return nil, errors.Newf("token file %s line %d: want name:token", path, i+1)
		case len(token) < minTokenLength:
			return nil, errors.Newf("token file %s: the token of %q must be at least %d characters", path, name, minTokenLength)
		case tokens[name] != "":
			return nil, errors.Newf("token file %s: name %q is given twice", path, name)
		case seen[token] != "":
			return nil, errors.Newf("token file %s: %q and %q have the same token", path, seen[token], name)
		}
		tokens[name], seen[token] = token, name
	}
	return tokens, nil
}

// caller is who sent a request, as far as the proxy can tell.
type caller struct {
	// token is the name of the bearer token presented, if it is one of the proxy's.
	token string
	// user is the basic-auth user, when the web config verified it.
	user string
	// certSubject is the subject of the verified client certificate.
	certSubject string
	// admin and reader say what the caller may do.
	admin, reader bool
}

// identify finds the caller of a request from its bearer token, its verified basic-auth user and
// its verified client certificate.
func (p *Proxy) identify(r *http.Request) caller {
	var c caller
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && got != "" {
		if name, ok := matchToken(got, p.cfg.adminTokens); ok {
			c.token, c.admin = name, true
		} else if name, ok := matchToken(got, p.cfg.ReadTokens); ok {
			c.token, c.reader = name, true
		}
	}
	if p.cfg.BasicAuthVerified {
		if user, _, ok := r.BasicAuth(); ok && user != "" {
			c.user, c.reader = user, true
			c.admin = c.admin || slices.Contains(p.cfg.AdminUsers, user)
		}
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		c.certSubject, c.reader = r.TLS.VerifiedChains[0][0].Subject.String(), true
	}
	return c
}

// matchToken returns the name of the token equal to got, comparing every token in constant time.
func matchToken(got string, tokens map[string]string) (string, bool) {
	var found string
	for name, token := range tokens {
		if subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			found = name
		}
	}
	return found, found != ""
}

// audit writes the one audit line of a tombstone action: who asked (token name, basic-auth user,
// client certificate subject, remote address), what (action, tombstone id, author, reason) and
// how it ended.
func (p *Proxy) audit(r *http.Request, action, tombstone, author, reason string, err error) {
	c := p.identify(r)
	outcome, msg := "ok", ""
	if err != nil {
		outcome, msg = "refused", err.Error()
	}
	p.logger.Info("audit",
		"action", action, "outcome", outcome, "error", msg,
		"tombstone", tombstone, "author", author, "reason", reason,
		"token", c.token, "user", c.user, "cert_subject", c.certSubject,
		"remote", r.RemoteAddr, "path", r.URL.Path)
}
