package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	kubernetesDir     = "deploy/kubernetes"
	kustomizationFile = "kustomization.yaml"
	grafanaDataSource = "deploy/grafana/datasource.yaml"
	// The proxy's endpoints that probes may use (CONTRACT.md); the test also asks the running
	// binary for each probe's path.
	completionIndexField = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
)

// decodeManifest decodes one YAML document strictly into the k8s.io/api type of its kind:
// unknown or duplicate fields fail.
func decodeManifest(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "policy/v1/PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "batch/v1/CronJob":
		obj = &batchv1.CronJob{}
	case "batch/v1/Job":
		obj = &batchv1.Job{}
	default:
		return nil, fmt.Errorf("kind %s %s: the test knows no type for it; add one", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return obj, nil
}

// splitDocuments splits a YAML stream on its --- lines.
func splitDocuments(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func TestDecodeManifestIsStrict(t *testing.T) {
	ok := "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 1}]\n"
	_, err := decodeManifest([]byte(ok))
	testutil.Ok(t, err)
	for _, bad := range []string{
		strings.Replace(ok, "ports:", "prots:", 1),
		ok + "  ports: [{port: 2}]\n",
		strings.Replace(ok, "kind: Service", "kind: Servise", 1),
	} {
		_, err := decodeManifest([]byte(bad))
		testutil.NotOk(t, err, "%s", bad)
	}
}

// workload is a pod template with what owns it.
type workload struct {
	kind, name string
	replicas   int32
	podLabels  map[string]string
	pod        corev1.PodSpec
	job        *batchv1.JobSpec // Jobs and CronJobs.
}

func workloads(objs []any) ([]workload, []*corev1.Service) {
	var ws []workload
	var svcs []*corev1.Service
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			r := int32(1)
			if o.Spec.Replicas != nil {
				r = *o.Spec.Replicas
			}
			ws = append(ws, workload{kind: "Deployment", name: o.Name, replicas: r, podLabels: o.Spec.Template.Labels, pod: o.Spec.Template.Spec})
		case *batchv1.CronJob:
			js := o.Spec.JobTemplate.Spec
			ws = append(ws, workload{kind: "CronJob", name: o.Name, podLabels: js.Template.Labels, pod: js.Template.Spec, job: &js})
		case *batchv1.Job:
			ws = append(ws, workload{kind: "Job", name: o.Name, podLabels: o.Spec.Template.Labels, pod: o.Spec.Template.Spec, job: &o.Spec})
		case *corev1.Service:
			svcs = append(svcs, o)
		}
	}
	return ws, svcs
}

func checkKubernetes(t *testing.T, root string, img *dockerfile, bins map[string]binary) {
	dir := filepath.Join(root, kubernetesDir)
	var kustomizations, manifests []string
	testutil.Ok(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch {
		case d.Name() == kustomizationFile:
			kustomizations = append(kustomizations, filepath.Dir(p))
		case strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml"):
			manifests = append(manifests, p)
		}
		return nil
	}))
	testutil.Assert(t, slices.Contains(kustomizations, dir), "%s has no %s: kubectl apply -k %s would fail", kubernetesDir, kustomizationFile, kubernetesDir)

	// Every manifest decodes strictly as it is written, and one kustomization lists it.
	listed := map[string]bool{}
	for _, k := range kustomizations {
		kust := readKustomization(t, k)
		for _, r := range kust.Resources {
			p := filepath.Join(k, r)
			st, err := os.Stat(p)
			testutil.Ok(t, err, "%s lists %s", rel(root, k), r)
			if st.IsDir() {
				_, err := os.Stat(filepath.Join(p, kustomizationFile))
				testutil.Ok(t, err, "%s lists the directory %s, which holds no kustomization", rel(root, k), r)
				continue
			}
			testutil.Assert(t, !listed[p], "%s is listed twice", rel(root, p))
			listed[p] = true
		}
	}
	for _, m := range manifests {
		testutil.Assert(t, listed[m], "no %s lists %s: kubectl apply -k leaves it out", kustomizationFile, rel(root, m))
		b, err := os.ReadFile(m)
		testutil.Ok(t, err)
		docs := splitDocuments(b)
		testutil.Assert(t, len(docs) > 0, "%s holds no manifest", rel(root, m))
		for _, doc := range docs {
			_, err := decodeManifest(doc)
			testutil.Ok(t, err, rel(root, m))
		}
	}

	helps := map[string]binaryHelp{}
	for name, b := range bins {
		helps[name] = binaryHelp{app: b.help(t)}
	}
	secrets := documentedSecrets(t, filepath.Join(dir, kustomizationFile))
	uid := strings.Split(lastUser(img), ":")[0]

	// What kubectl apply -k applies: each kustomization rendered, decoded strictly again.
	var rootObjs []any
	for _, k := range kustomizations {
		t.Run(rel(root, k), func(t *testing.T) {
			kust := readKustomization(t, k)
			objs := render(t, k)
			if k == dir {
				rootObjs = objs
			}
			ws, svcs := workloads(objs)
			testutil.Assert(t, len(ws) > 0, "no workload")
			for _, w := range ws {
				checkWorkload(t, w, kust, img, bins, helps, secrets, uid)
			}
			for _, s := range svcs {
				checkService(t, s, ws)
			}
		})
	}
	checkRoot(t, rootObjs)
	checkGrafana(t, root, rootObjs)
}

func rel(root, p string) string {
	r, err := filepath.Rel(root, p)
	if err != nil {
		return p
	}
	return r
}

func readKustomization(t *testing.T, dir string) kusttypes.Kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, kustomizationFile))
	testutil.Ok(t, err)
	var k kusttypes.Kustomization
	testutil.Ok(t, yaml.UnmarshalStrict(b, &k), "%s/%s", dir, kustomizationFile)
	testutil.Equals(t, "Kustomization", k.Kind, "%s/%s", dir, kustomizationFile)
	return k
}

func render(t *testing.T, dir string) []any {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	testutil.Ok(t, err, "kustomize build %s", dir)
	var objs []any
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		testutil.Ok(t, err)
		o, err := decodeManifest(y)
		testutil.Ok(t, err, "rendered %s", r.CurId())
		objs = append(objs, o)
	}
	return objs
}

// documentedSecrets reads the `kubectl create secret generic NAME --from-...=KEY=...` lines that
// the kustomization tells the operator to run: the manifests may mount only those keys.
func documentedSecrets(t *testing.T, file string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(file)
	testutil.Ok(t, err)
	out := map[string][]string{}
	for _, m := range regexp.MustCompile(`create secret generic (\S+)((?: --from-(?:file|literal)=[^=\s]+=\S+)+)`).FindAllStringSubmatch(string(b), -1) {
		for _, k := range regexp.MustCompile(`--from-(?:file|literal)=([^=\s]+)=`).FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], k[1])
		}
	}
	testutil.Assert(t, len(out) > 0, "%s documents no `kubectl create secret generic`", file)
	return out
}

func lastUser(d *dockerfile) string {
	var u string
	for _, in := range d.stages[len(d.stages)-1].instrs {
		if in.cmd == "USER" {
			u = in.args
		}
	}
	return u
}

// binaryHelp is a binary's app-level --help and its subcommands' help, read once each.
type binaryHelp struct {
	app  help
	subs map[string]help
}

// invocation is a container's command line read against its binary's --help.
type invocation struct {
	binary  string
	sub     []string          // The subcommand, e.g. [run].
	flags   map[string]string // --name=value; value "" for a bare boolean flag.
	order   []string
	allowed help // App-level and subcommand flags together.
}

// listenPort returns the port the flag makes the binary listen on, as set or by default; 0 for none.
func (inv invocation) listenPort(t *testing.T, flag string) int32 {
	t.Helper()
	v, set := inv.flags[flag]
	if !set {
		v = inv.allowed.flags[flag].def
	}
	if v == "" {
		return 0
	}
	_, p, err := net.SplitHostPort(v)
	testutil.Ok(t, err, "--%s=%s", flag, v)
	n, err := strconv.Atoi(p)
	testutil.Ok(t, err, "--%s=%s", flag, v)
	return int32(n)
}

// listenFlags are the flags that make a binary listen; the StoreAPI's --grpc-address listens only
// when --store.endpoint turns that mode on.
var listenFlags = []string{"web.listen-address", "grpc-address"}

// listenEnabledBy names the flag without which a listen flag opens no port.
var listenEnabledBy = map[string]string{"grpc-address": "store.endpoint"}

func readInvocation(t *testing.T, c corev1.Container, img *dockerfile, bins map[string]binary, helps map[string]binaryHelp) invocation {
	t.Helper()
	testutil.Equals(t, 1, len(c.Command), "container %s: command must name the binary alone", c.Name)
	var name string
	for n, p := range img.binaries {
		if p == c.Command[0] {
			name = n
		}
	}
	testutil.Assert(t, name != "", "container %s: command %s is none of the image's binaries %v", c.Name, c.Command[0], img.binaries)
	bh := helps[name]
	inv := invocation{binary: name, flags: map[string]string{}, allowed: help{flags: map[string]flagHelp{}}}
	for f, h := range bh.app.flags {
		inv.allowed.flags[f] = h
	}
	args := c.Args
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		testutil.Assert(t, len(inv.sub) == 0 && bh.app.commands[args[0]] && args[0] != "help",
			"container %s: %s has no command %q (its --help lists %v)", c.Name, name, args[0], bh.app.commands)
		inv.sub = append(inv.sub, args[0])
		args = args[1:]
	}
	if len(inv.sub) > 0 {
		if bh.subs == nil {
			bh.subs = map[string]help{}
			helps[name] = bh
		}
		sh, ok := bh.subs[inv.sub[0]]
		if !ok {
			sh = bins[name].help(t, inv.sub...)
			bh.subs[inv.sub[0]] = sh
		}
		for f, h := range sh.flags {
			inv.allowed.flags[f] = h
		}
	}
	for _, a := range args {
		testutil.Assert(t, strings.HasPrefix(a, "--"), "container %s: argument %q: flags as --name=value, and the subcommand first", c.Name, a)
		n, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		_, ok := inv.allowed.flags[n]
		testutil.Assert(t, ok && n != "help" && n != "h", "container %s: %s %s --help lists no flag --%s", c.Name, name, strings.Join(inv.sub, " "), n)
		_, dup := inv.flags[n]
		testutil.Assert(t, !dup, "container %s: --%s given twice", c.Name, n)
		inv.flags[n] = v
		inv.order = append(inv.order, n)
	}
	return inv
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func checkWorkload(t *testing.T, w workload, kust kusttypes.Kustomization, img *dockerfile, bins map[string]binary, helps map[string]binaryHelp, secrets map[string][]string, uid string) {
	where := w.kind + "/" + w.name
	p := w.pod
	testutil.Assert(t, p.SecurityContext != nil && p.SecurityContext.RunAsNonRoot != nil && *p.SecurityContext.RunAsNonRoot, "%s: runAsNonRoot", where)
	testutil.Assert(t, p.SecurityContext.RunAsUser != nil && strconv.FormatInt(*p.SecurityContext.RunAsUser, 10) == uid, "%s: runAsUser must be the image's USER %s", where, uid)
	volumes := map[string]corev1.Volume{}
	for _, v := range p.Volumes {
		volumes[v.Name] = v
	}
	testutil.Equals(t, 1, len(p.Containers), "%s: one container", where)
	for _, c := range p.Containers {
		where := where + " container " + c.Name
		images := make([]string, 0, len(kust.Images))
		for _, i := range kust.Images {
			images = append(images, i.NewName+":"+i.NewTag)
		}
		testutil.Assert(t, slices.Contains(images, c.Image), "%s: image %s was not set by the kustomization's images %v", where, c.Image, images)
		sc := c.SecurityContext
		testutil.Assert(t, sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, "%s: readOnlyRootFilesystem", where)
		testutil.Assert(t, sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation: false", where)
		testutil.Assert(t, sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}), "%s: drop ALL capabilities", where)
		testutil.Assert(t, !c.Resources.Requests.Cpu().IsZero() && !c.Resources.Requests.Memory().IsZero() && !c.Resources.Limits.Memory().IsZero(),
			"%s: requests cpu and memory, limits memory", where)

		inv := readInvocation(t, c, img, bins, helps)
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		for _, n := range inv.order {
			for _, m := range envRef.FindAllStringSubmatch(inv.flags[n], -1) {
				_, ok := env[m[1]]
				testutil.Assert(t, ok, "%s: --%s uses $(%s), which the container's env does not define", where, n, m[1])
			}
		}
		checkShard(t, where, w, inv, env)
		checkFiles(t, where, c, inv, volumes, secrets)

		// Ports: each listening flag has its containerPort, and each containerPort its flag.
		ports := map[int32]bool{}
		for _, f := range listenFlags {
			if on, ok := listenEnabledBy[f]; ok {
				if _, set := inv.flags[on]; !set {
					continue
				}
			}
			if port := inv.listenPort(t, f); port != 0 {
				ports[port] = true
				testutil.Assert(t, containerPort(c, intstr.FromInt32(port)) != nil, "%s: --%s listens on %d, no containerPort says so", where, f, port)
			}
		}
		for _, cp := range c.Ports {
			testutil.Assert(t, ports[cp.ContainerPort], "%s: containerPort %s %d matches no --%s", where, cp.Name, cp.ContainerPort, strings.Join(listenFlags, " / --"))
		}

		// Probes: on the HTTP listener, on paths the binary answers 200 on.
		var paths []string
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if pr == nil {
				continue
			}
			testutil.Assert(t, pr.HTTPGet != nil, "%s: probes are HTTP GETs", where)
			cp := containerPort(c, pr.HTTPGet.Port)
			testutil.Assert(t, cp != nil && cp.ContainerPort == inv.listenPort(t, "web.listen-address"), "%s: probe port %s is not --web.listen-address", where, pr.HTTPGet.Port.String())
			paths = append(paths, pr.HTTPGet.Path)
		}
		if inv.binary == "lethe-proxy" {
			testutil.Assert(t, c.ReadinessProbe != nil && c.LivenessProbe != nil, "%s: readiness and liveness probes", where)
			serveProbes(t, where, bins[inv.binary], c, inv, volumes, paths)
		}
	}
}

// checkShard holds --shard=$(VAR)/n against the Job: an Indexed Job of n completions whose pod
// gets VAR from its completion index.
func checkShard(t *testing.T, where string, w workload, inv invocation, env map[string]corev1.EnvVar) {
	v, set := inv.flags["shard"]
	indexed := w.job != nil && w.job.CompletionMode != nil && *w.job.CompletionMode == batchv1.IndexedCompletion
	if !set {
		testutil.Assert(t, !indexed, "%s: an Indexed Job without --shard runs every worker over every block", where)
		return
	}
	m := regexp.MustCompile(`^\$\(([A-Za-z_][A-Za-z0-9_]*)\)/([1-9][0-9]*)$`).FindStringSubmatch(v)
	testutil.Assert(t, m != nil, "%s: --shard=%s: want $(VAR)/n with VAR the completion index", where, v)
	testutil.Assert(t, indexed, "%s: --shard from a completion index needs completionMode: Indexed", where)
	n, _ := strconv.Atoi(m[2])
	testutil.Assert(t, w.job.Completions != nil, "%s: --shard i/%d needs completions: %d", where, n, n)
	testutil.Equals(t, n, int(*w.job.Completions), "%s: --shard i/%d against the Job's completions", where, n)
	testutil.Assert(t, w.job.Parallelism == nil || *w.job.Parallelism <= *w.job.Completions, "%s: parallelism above completions", where)
	e := env[m[1]]
	testutil.Assert(t, m[1] == "JOB_COMPLETION_INDEX" || (e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == completionIndexField),
		"%s: $(%s) must come from %s", where, m[1], completionIndexField)
}

// checkFiles checks that every file flag points into a mounted volume (a Secret's item where the
// volume names items, documented in the kustomization), and every directory flag into a writable one.
func checkFiles(t *testing.T, where string, c corev1.Container, inv invocation, volumes map[string]corev1.Volume, secrets map[string][]string) {
	for _, n := range inv.order {
		v := inv.flags[n]
		isFile := strings.HasSuffix(n, "-file") || strings.HasSuffix(n, ".file")
		isDir := strings.HasSuffix(n, ".dir") || strings.HasSuffix(n, "-dir")
		if !isFile && !isDir {
			continue
		}
		testutil.Assert(t, path.IsAbs(v), "%s: --%s=%s: an absolute path into a volume", where, n, v)
		var mount *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if strings.HasPrefix(v+"/", strings.TrimSuffix(m.MountPath, "/")+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		testutil.Assert(t, mount != nil, "%s: --%s=%s lies in no volumeMount", where, n, v)
		vol, ok := volumes[mount.Name]
		testutil.Assert(t, ok, "%s: volumeMount %s names no volume", where, mount.Name)
		inside := strings.TrimPrefix(strings.TrimPrefix(v, mount.MountPath), "/")
		if isDir {
			testutil.Assert(t, !mount.ReadOnly && (vol.EmptyDir != nil || vol.Ephemeral != nil), "%s: --%s=%s must be on a writable emptyDir or ephemeral volume", where, n, v)
			continue
		}
		testutil.Assert(t, vol.Secret != nil, "%s: --%s=%s: files come from Secrets here", where, n, v)
		keys := secrets[vol.Secret.SecretName]
		testutil.Assert(t, len(keys) > 0, "%s: Secret %s: the kustomization does not tell how to create it", where, vol.Secret.SecretName)
		found := false
		for _, it := range vol.Secret.Items {
			testutil.Assert(t, slices.Contains(keys, it.Key), "%s: Secret %s: key %s is not the one documented (%v)", where, vol.Secret.SecretName, it.Key, keys)
			found = found || it.Path == inside
		}
		testutil.Assert(t, found || (len(vol.Secret.Items) == 0 && slices.Contains(keys, inside)), "%s: --%s=%s: Secret %s puts no file there", where, n, v, vol.Secret.SecretName)
	}
}

func containerPort(c corev1.Container, p intstr.IntOrString) *corev1.ContainerPort {
	for i, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return &c.Ports[i]
		}
	}
	return nil
}

// serveProbes runs the proxy with the container's own arguments, its volumes laid out in a
// temporary directory, and asks it for each probe's path. Two arguments change: it listens on
// 127.0.0.1:0, and --upstream.url is left out (it serves the empty bucket), since no Thanos
// Query runs here.
func serveProbes(t *testing.T, where string, b binary, c corev1.Container, inv invocation, volumes map[string]corev1.Volume, paths []string) {
	tmp := t.TempDir()
	bucketDir := filepath.Join(tmp, "bucket")
	testutil.Ok(t, os.MkdirAll(bucketDir, 0o755))
	secretContent := map[string]string{
		"thanos.yaml": "type: FILESYSTEM\nconfig:\n  directory: " + bucketDir + "\n",
		"token":       "0123456789abcdef0123456789abcdef\n",
	}
	remap := map[string]string{}
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(tmp, "mounts", m.Name)
		testutil.Ok(t, os.MkdirAll(dir, 0o755))
		remap[m.MountPath] = dir
		if s := volumes[m.Name].Secret; s != nil {
			for _, it := range s.Items {
				content, ok := secretContent[it.Key]
				testutil.Assert(t, ok, "%s: the test knows no content for Secret key %s", where, it.Key)
				testutil.Ok(t, os.WriteFile(filepath.Join(dir, it.Path), []byte(content), 0o600))
			}
		}
	}
	var args []string
	for _, a := range c.Args {
		n, v, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") {
			args = append(args, a)
			continue
		}
		switch n {
		case "upstream.url":
			args = append(args, "--data-dir="+filepath.Join(tmp, "data"))
			continue
		case "web.listen-address":
			v = "127.0.0.1:0"
		}
		longest := ""
		for from := range remap {
			if strings.HasPrefix(v, from+"/") && len(from) > len(longest) {
				longest = from
			}
		}
		if longest != "" {
			v = remap[longest] + strings.TrimPrefix(v, longest)
		}
		if hasValue {
			a = "--" + n + "=" + v
		}
		args = append(args, a)
	}
	if _, set := inv.flags["web.listen-address"]; !set {
		args = append(args, "--web.listen-address=127.0.0.1:0")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.path, args...)
	stderr, err := cmd.StderrPipe()
	testutil.Ok(t, err)
	testutil.Ok(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	addr := make(chan string, 1)
	done := make(chan struct{})
	var log bytes.Buffer
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			var l struct {
				Msg     string `json:"msg"`
				Address string `json:"address"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "lethe-proxy serving" {
				addr <- l.Address
			}
		}
	}()
	var a string
	select {
	case a = <-addr:
	case <-done:
	case <-ctx.Done():
	}
	if a == "" {
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s: lethe-proxy %v did not start serving: %s", where, args, log.String())
	}
	for _, p := range paths {
		u := (&url.URL{Scheme: "http", Host: a, Path: p}).String()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		testutil.Ok(t, err)
		resp, err := http.DefaultClient.Do(req)
		testutil.Ok(t, err)
		body, _ := io.ReadAll(resp.Body)
		testutil.Ok(t, resp.Body.Close())
		testutil.Equals(t, http.StatusOK, resp.StatusCode, "%s: probe GET %s: %s", where, p, body)
	}
}

// checkService checks that the Service selects a workload and that its ports reach that
// workload's container ports.
func checkService(t *testing.T, s *corev1.Service, ws []workload) {
	var w *workload
	for i := range ws {
		if len(s.Spec.Selector) > 0 && matches(s.Spec.Selector, ws[i].podLabels) {
			w = &ws[i]
		}
	}
	testutil.Assert(t, w != nil, "Service %s selects no pods", s.Name)
	for _, p := range s.Spec.Ports {
		target := p.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(p.Port)
		}
		testutil.Assert(t, containerPort(w.pod.Containers[0], target) != nil, "Service %s port %s: target %s is no container port of %s", s.Name, p.Name, target.String(), w.name)
	}
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkRoot checks what the main kustomization must hold: lethe-proxy in 2+ replicas behind a
// Service, and the rewriter as a CronJob.
func checkRoot(t *testing.T, objs []any) {
	ws, svcs := workloads(objs)
	var proxy, cron bool
	for _, w := range ws {
		cmd := w.pod.Containers[0].Command[0]
		switch {
		case w.kind == "Deployment" && path.Base(cmd) == "lethe-proxy":
			proxy = true
			testutil.Assert(t, w.replicas >= 2, "Deployment %s: %d replicas, want 2 or more", w.name, w.replicas)
		case w.kind == "CronJob" && path.Base(cmd) == "lethe-rewriter":
			cron = true
		}
	}
	testutil.Assert(t, proxy && cron && len(svcs) > 0, "want a lethe-proxy Deployment (%v), a Service (%d) and a lethe-rewriter CronJob (%v)", proxy, len(svcs), cron)
}

// grafanaProvisioning is the part of Grafana's data-source provisioning file lethe uses; the
// strict decoding refuses any other field.
type grafanaProvisioning struct {
	APIVersion  int `json:"apiVersion"`
	Datasources []struct {
		Name      string `json:"name"`
		UID       string `json:"uid"`
		Type      string `json:"type"`
		Access    string `json:"access"`
		URL       string `json:"url"`
		IsDefault bool   `json:"isDefault"`
		Editable  bool   `json:"editable"`
		JSONData  struct {
			HTTPMethod          string `json:"httpMethod"`
			PrometheusType      string `json:"prometheusType"`
			TimeInterval        string `json:"timeInterval"`
			IncrementalQuerying *bool  `json:"incrementalQuerying"`
			CacheLevel          string `json:"cacheLevel"`
		} `json:"jsonData"`
	} `json:"datasources"`
}

// checkGrafana checks that the data source points at the proxy's Service, by its namespaced name
// and port, with Grafana's own result caching off.
func checkGrafana(t *testing.T, root string, objs []any) {
	b, err := os.ReadFile(filepath.Join(root, grafanaDataSource))
	testutil.Ok(t, err)
	var g grafanaProvisioning
	testutil.Ok(t, yaml.UnmarshalStrict(b, &g), grafanaDataSource)
	testutil.Equals(t, 1, g.APIVersion)
	testutil.Equals(t, 1, len(g.Datasources))
	ds := g.Datasources[0]
	testutil.Equals(t, "prometheus", ds.Type)
	testutil.Equals(t, "proxy", ds.Access, "Grafana's server, not the browser, must reach the proxy")
	testutil.Assert(t, ds.JSONData.IncrementalQuerying != nil && !*ds.JSONData.IncrementalQuerying, "incrementalQuerying: false, or Grafana keeps samples from before a tombstone")
	u, err := url.Parse(ds.URL)
	testutil.Ok(t, err)

	_, svcs := workloads(objs)
	ws, _ := workloads(objs)
	var want []string
	for _, s := range svcs {
		for _, w := range ws {
			if w.kind == "Deployment" && path.Base(w.pod.Containers[0].Command[0]) == "lethe-proxy" && matches(s.Spec.Selector, w.podLabels) {
				for _, p := range s.Spec.Ports {
					want = append(want, fmt.Sprintf("http://%s.%s.svc:%d", s.Name, s.Namespace, p.Port))
				}
			}
		}
	}
	testutil.Assert(t, slices.Contains(want, u.Scheme+"://"+u.Host) && (u.Path == "" || u.Path == "/"), "data source url %s: want one of %v", ds.URL, want)
}
