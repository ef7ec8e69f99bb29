// Package workload is what the Kubernetes tests, the demo and the bench do
// with a cluster of package integration/k8s/cluster: deploy the test
// server (a Deployment and two NodePort Services), wait for its pods,
// scale it, and talk to the pods from inside a node's network namespace.
package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/vnet-cni/vnet-cni/integration/k8s/images"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

const (
	// Namespace holds the test workloads.
	Namespace = "vnet-k8s"
	// Name is the test server's Deployment and its policy-Cluster
	// Service; NameLocal the policy-Local Service.
	Name      = "testserver"
	NameLocal = "testserver-local"
	// Port is the test server's container port.
	Port = 8080
)

var labels = map[string]string{"app": Name}

// WaitFor polls cond every 200 ms until it holds; after timeout (or when
// ctx ends) it returns an error naming what and cond's last reason.
func WaitFor(ctx context.Context, what string, timeout time.Duration, cond func() (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s (%w)", what, why, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// DeployTestServer creates the namespace, a Deployment of replicas test
// servers spread over the nodes, and two NodePort Services in front of
// them: externalTrafficPolicy Cluster (the default) and Local.
func DeployTestServer(ctx context.Context, cs kubernetes.Interface, replicas int32) (cluster, local *corev1.Service, err error) {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("create namespace %s: %w", Namespace, err)
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: Namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       ServerPodSpec(),
			},
		},
	}
	dep.Spec.Template.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
		MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
		LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
	}}
	if _, err := cs.AppsV1().Deployments(Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("create deployment: %w", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: Namespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, Selector: labels,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(Port)}},
		},
	}
	cluster, err = cs.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create service %s: %w", Name, err)
	}
	loc := svc.DeepCopy()
	loc.Name = NameLocal
	loc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	local, err = cs.CoreV1().Services(Namespace).Create(ctx, loc, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create service %s: %w", NameLocal, err)
	}
	return cluster, local, nil
}

// ServerPodSpec is the test server's pod: the image the harness imports
// (never pulled), a short grace period, no service account token, its
// address in POD_IP.
func ServerPodSpec() corev1.PodSpec {
	grace := int64(2)
	automount := false
	return corev1.PodSpec{
		TerminationGracePeriodSeconds: &grace,
		AutomountServiceAccountToken:  &automount,
		Containers: []corev1.Container{{
			Name: "server", Image: images.TestServer, ImagePullPolicy: corev1.PullNever,
			Ports: []corev1.ContainerPort{{ContainerPort: Port}},
			Env: []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
		}},
	}
}

// Pods lists the test server's pods.
func Pods(ctx context.Context, cs kubernetes.Interface) ([]corev1.Pod, error) {
	l, err := cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + Name})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return l.Items, nil
}

// WaitRunning waits until exactly n test pods exist, all Running and
// Ready, and returns them.
func WaitRunning(ctx context.Context, cs kubernetes.Interface, n int, timeout time.Duration) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := WaitFor(ctx, fmt.Sprintf("%d test pods Running", n), timeout, func() (bool, string) {
		var err error
		if pods, err = Pods(ctx, cs); err != nil {
			return false, err.Error()
		}
		running := 0
		var waiting []string
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning && Ready(p) && p.DeletionTimestamp == nil {
				running++
			} else if len(waiting) < 3 {
				waiting = append(waiting, fmt.Sprintf("%s on %q: %s %s", p.Name, p.Spec.NodeName, p.Status.Phase, Why(p)))
			}
		}
		return running == n && len(pods) == n, fmt.Sprintf("%d pods, %d running; e.g. %v", len(pods), running, waiting)
	})
	return pods, err
}

// WaitGone waits until no test pod is left.
func WaitGone(ctx context.Context, cs kubernetes.Interface, timeout time.Duration) error {
	return WaitFor(ctx, "every test pod gone", timeout, func() (bool, string) {
		pods, err := Pods(ctx, cs)
		if err != nil {
			return false, err.Error()
		}
		return len(pods) == 0, fmt.Sprintf("%d pods left", len(pods))
	})
}

// Ready says whether the pod's Ready condition is true.
func Ready(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Why is the reason a pod is not running yet: a waiting container's, or
// a false condition's message.
func Why(p corev1.Pod) string {
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Waiting != nil {
			return c.State.Waiting.Reason + ": " + c.State.Waiting.Message
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			return string(c.Type) + ": " + c.Message
		}
	}
	return ""
}

// Scale sets the Deployment's replicas. A conflict (the Deployment
// changed since it was read, e.g. by its controller right after its
// creation) is tried again with the new version.
func Scale(ctx context.Context, cs kubernetes.Interface, replicas int32) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := cs.AppsV1().Deployments(Namespace).GetScale(ctx, Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = replicas
		_, err = cs.AppsV1().Deployments(Namespace).UpdateScale(ctx, Name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("scale to %d: %w", replicas, err)
	}
	return nil
}

// ReadyEndpoints counts the ready endpoints of a Service's EndpointSlices.
func ReadyEndpoints(ctx context.Context, cs kubernetes.Interface, service string) (int, error) {
	l, err := cs.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + service})
	if err != nil {
		return 0, fmt.Errorf("list endpoint slices: %w", err)
	}
	ready := 0
	for _, s := range l.Items {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				ready++
			}
		}
	}
	return ready, nil
}

// HTTPIn is an HTTP client whose connections are made in the namespace
// (a node reaches its own pods over its datapath and the others' through
// the fabric).
func HTTPIn(nsPath string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: nsnet.DialContextIn(nsPath), DisableKeepAlives: true}, Timeout: 10 * time.Second}
}

// Fetch GETs url through hc and returns the body of a 200 answer.
func Fetch(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// Identity is the test server's answer to GET /.
type Identity struct {
	Hostname string `json:"hostname"`
	PodIP    string `json:"podIP"`
	Client   string `json:"client"`
}

// ParseIdentity decodes an answer of GET /.
func ParseIdentity(body string) (Identity, error) {
	var id Identity
	if err := json.Unmarshal([]byte(body), &id); err != nil {
		return Identity{}, fmt.Errorf("answer %q: %w", body, err)
	}
	return id, nil
}

// ViaPod makes pod GET target (from inside the pod, which the node in
// nodeNS reaches) and decodes the test server's identity answer.
func ViaPod(ctx context.Context, nodeNS string, pod corev1.Pod, target string) (Identity, error) {
	body, err := Fetch(ctx, HTTPIn(nodeNS), PodURL(pod, "/get?url="+url.QueryEscape(target)))
	if err != nil {
		return Identity{}, err
	}
	return ParseIdentity(body)
}

// Dial makes pod connect to the TCP server at addr (a probe server) and
// returns the first line the server sent.
func Dial(ctx context.Context, nodeNS string, pod corev1.Pod, addr string) (string, error) {
	return Fetch(ctx, HTTPIn(nodeNS), PodURL(pod, "/dial?addr="+url.QueryEscape(addr)))
}

// PodURL is the URL of path on the pod's test server.
func PodURL(pod corev1.Pod, path string) string {
	return "http://" + net.JoinHostPort(pod.Status.PodIP, fmt.Sprint(Port)) + path
}

// StartupTimes returns creation→Ready of the pods from the API's
// timestamps (one-second resolution), sorted.
func StartupTimes(pods []corev1.Pod) []time.Duration {
	var ds []time.Duration
	for _, p := range pods {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ds = append(ds, c.LastTransitionTime.Sub(p.CreationTimestamp.Time))
			}
		}
	}
	slices.Sort(ds)
	return ds
}
