package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/efficientgo/core/testutil"
	"golang.org/x/crypto/bcrypt"
)

// TestProxyWebConfigBasicAuth: with exporter-toolkit's web configuration, every endpoint asks for
// the basic-auth credentials, as Prometheus does with the same file.
func TestProxyWebConfigBasicAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("grafana-secret"), bcrypt.MinCost)
	testutil.Ok(t, err)
	conf := filepath.Join(t.TempDir(), "web.yml")
	testutil.Ok(t, os.WriteFile(conf, []byte("basic_auth_users:\n  grafana: "+string(hash)+"\n"), 0o600))
	p := startProxy(t, t.TempDir(), "--web.config.file="+conf)

	for _, tc := range []struct {
		user, pass string
		want       int
	}{
		{"", "", http.StatusUnauthorized},
		{"grafana", "wrong", http.StatusUnauthorized},
		{"grafana", "grafana-secret", http.StatusOK},
	} {
		req, err := http.NewRequest(http.MethodGet, p.URL+"/api/v1/labels", nil)
		testutil.Ok(t, err)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		testutil.Ok(t, err)
		resp.Body.Close()
		testutil.Equals(t, tc.want, resp.StatusCode, "user %q", tc.user)
	}
}
