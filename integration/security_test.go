package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// secCluster starts a sim and a cluster for a security test.
func secCluster(t *testing.T, nodes int, tune func(c *config.Config)) (*sim.Sim, *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	s, err := sim.Start(ctx, sim.Options{Nodes: nodes, Prefix: nstest.Prefix(t), Dir: t.TempDir(),
		OperationDuration: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	c, err := cluster.New(s.Description(), cluster.Options{Dir: t.TempDir(), BinDir: "../bin",
		IPAMD: func(_ string, c *config.Config) {
			if tune != nil {
				tune(c)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s, c
}

// daemonPID finds the vnet-ipamd process of the node (ip netns exec execs
// into it, so it is the process whose command line names the node's config).
func daemonPID(t *testing.T, n *cluster.Node) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if strings.HasSuffix(args[0], "vnet-ipamd") && bytes.Contains(cmd, []byte(n.ConfigPath)) {
			return pid
		}
	}
	t.Fatalf("no vnet-ipamd process for %s", n.Name)
	return 0
}

// statusAs runs `vnet-ipamd status` (a real rpc client) against socket as
// uid, and returns its combined output and error.
func statusAs(t *testing.T, socket string, uid uint32) (string, error) {
	t.Helper()
	bin, err := filepath.Abs("../bin/vnet-ipamd")
	if err != nil {
		t.Fatal(err)
	}
	if uid != 0 {
		bin = execCopyForOtherUID(t, bin)
	}
	cmd := exec.Command(bin, "status", "--socket", socket, "--json")
	if uid != 0 {
		cmd.Dir = filepath.Dir(bin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSecuritySocket: the daemon's socket is a root-owned 0600 unix socket,
// a non-root client is refused by the file mode and, when the mode is
// loosened, by the daemon's SO_PEERCRED check; the store's files are 0600
// in a 0700 directory; and the only TCP listener of the daemon is the
// metrics endpoint on loopback.
func TestSecuritySocket(t *testing.T) {
	nstest.RequireRoot(t)
	_, c := secCluster(t, 1, nil)
	n := c.Nodes[0]
	sock := n.Config.SocketPath

	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 || st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("socket %s: mode %s uid %d gid %d, want a 0600 socket owned by root", sock, fi.Mode(), st.Uid, st.Gid)
	}
	if out, err := statusAs(t, sock, 0); err != nil {
		t.Fatalf("root client refused: %v\n%s", err, out)
	}

	// The same socket (a hard link: same inode, same mode) in a directory
	// that everybody may traverse, so that only the socket's own mode and
	// the daemon's check stand in the way.
	open, err := os.MkdirTemp("", "vnet-sec-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(open)
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(open, "ipamd.sock")
	if err := os.Link(sock, link); err != nil {
		t.Fatal(err)
	}

	t.Run("file mode refuses uid 65534", func(t *testing.T) {
		out, err := statusAs(t, link, 65534)
		if err == nil || !strings.Contains(out, "permission denied") {
			t.Fatalf("non-root client: err %v, output %q; want connect: permission denied", err, out)
		}
		t.Log(strings.TrimSpace(out))
	})
	t.Run("SO_PEERCRED refuses uid 65534 on a loosened socket", func(t *testing.T) {
		if err := os.Chmod(link, 0o666); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.Chmod(link, 0o600); err != nil {
				t.Fatal(err)
			}
		}()
		out, err := statusAs(t, link, 65534)
		if err == nil || !strings.Contains(out, "uid 65534 is not allowed") || !strings.Contains(out, string(api.CodePermissionDenied)) {
			t.Fatalf("non-root client on a 0666 socket: err %v, output %q; want PermissionDenied from the daemon", err, out)
		}
		t.Log(strings.TrimSpace(out))
		logs, err := os.ReadFile(n.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(logs, []byte(`"msg":"rpc peer refused","uid":65534`)) {
			t.Errorf("the daemon did not log the refusal of uid 65534")
		}
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode not restored: %v %v", fi.Mode(), err)
	}

	t.Run("a flood of idle and slow clients does not starve a caller", func(t *testing.T) {
		socketFlood(t, sock)
	})

	t.Run("store files are 0600 in a 0700 directory", func(t *testing.T) {
		files := 0
		err := filepath.WalkDir(n.Config.StoreDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			st := info.Sys().(*syscall.Stat_t)
			switch {
			case d.IsDir() && info.Mode().Perm() != 0o700:
				t.Errorf("%s: directory mode %s, want 0700", path, info.Mode().Perm())
			case !d.IsDir() && info.Mode().Perm()&0o077 != 0:
				t.Errorf("%s: mode %s, want no access for group and others", path, info.Mode().Perm())
			case st.Uid != 0:
				t.Errorf("%s: owned by uid %d", path, st.Uid)
			}
			if !d.IsDir() {
				files++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if files == 0 {
			t.Fatal("the store has no files")
		}
	})

	t.Run("only metrics listens on TCP, on loopback", func(t *testing.T) {
		pid := daemonPID(t, n)
		inodes := socketInodes(t, pid)
		var listeners []string
		for _, f := range []string{"tcp", "tcp6"} {
			for _, l := range listenSockets(t, filepath.Join("/proc", strconv.Itoa(pid), "net", f)) {
				if inodes[l.inode] {
					listeners = append(listeners, l.addr.String())
					if !l.addr.Addr().IsLoopback() {
						t.Errorf("vnet-ipamd listens on %s, not loopback", l.addr)
					}
				}
			}
		}
		if len(listeners) != 1 || listeners[0] != n.Config.MetricsAddr.String() {
			t.Errorf("vnet-ipamd listens on %v, want only the metrics address %s", listeners, n.Config.MetricsAddr)
		}
		t.Logf("tcp listeners of vnet-ipamd (pid %d): %v", pid, listeners)
	})
}

// socketFlood opens 300 connections that send nothing and 50 that trickle a
// request one byte per 100 ms, then checks that a status call with a 2 s
// deadline (api.Client, then the real `vnet-ipamd status`) answers, and that
// the daemon cuts the slow clients off at its request deadline (2 s).
func socketFlood(t *testing.T, sock string) {
	const idle, slow = 300, 50
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			t.Fatalf("flood connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		return c
	}
	for range idle {
		dial()
	}
	req := []byte(`{"version":"1.0","op":"status","body":{}}`)
	req = append(binary.BigEndian.AppendUint32(nil, uint32(len(req))), req...)
	start := time.Now()
	cut := make(chan time.Duration, slow)
	for range slow {
		c := dial()
		go func() {
			for _, b := range req {
				if _, err := c.Write([]byte{b}); err != nil {
					cut <- time.Since(start)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			cut <- 0 // the whole request went through: not cut off
		}()
	}
	time.Sleep(200 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := api.NewClient(sock).Status(ctx, api.StatusRequest{}); err != nil {
		t.Fatalf("status behind %d idle and %d slow clients: %v after %s", idle, slow, err, time.Since(t0))
	}
	t.Logf("api.Client status behind %d idle and %d slow clients: %s", idle, slow, time.Since(t0))
	t0 = time.Now()
	if out, err := statusAs(t, sock, 0); err != nil {
		t.Fatalf("vnet-ipamd status behind the flood: %v\n%s", err, out)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("vnet-ipamd status behind the flood took %s", took)
	} else {
		t.Logf("vnet-ipamd status (a fresh process) behind the flood: %s", took)
	}
	var last time.Duration
	for range slow {
		d := <-cut
		if d == 0 || d > 4*time.Second {
			t.Fatalf("a slow client was not cut off by the request deadline (%s)", d)
		}
		last = max(last, d)
	}
	t.Logf("all %d slow clients cut off within %s of connecting", slow, last)
}

// socketInodes returns the inodes of the sockets the process holds.
func socketInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			out[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	return out
}

type listenSocket struct {
	addr  netip.AddrPort
	inode string
}

// listenSockets parses /proc/<pid>/net/tcp{,6}: the sockets in state LISTEN
// (0A) of the process's network namespace.
func listenSockets(t *testing.T, path string) []listenSocket {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []listenSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" {
			continue
		}
		hexAddr, hexPort, _ := strings.Cut(fields[1], ":")
		raw, err := hex.DecodeString(hexAddr)
		if err != nil {
			t.Fatalf("%s: %q", path, fields[1])
		}
		// The kernel prints the address as host-order 32-bit words.
		for i := 0; i+4 <= len(raw); i += 4 {
			binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
		}
		addr, _ := netip.AddrFromSlice(raw)
		port, _ := strconv.ParseUint(hexPort, 16, 16)
		out = append(out, listenSocket{addr: netip.AddrPortFrom(addr.Unmap(), uint16(port)), inode: fields[9]})
	}
	return out
}

// tokenShape matches every token the sim's IMDS issues ("sim-" and 48 hex
// digits); the test checks the shape against a token it asks for itself.
var tokenShape = regexp.MustCompile(`sim-[0-9a-f]{48}`)

// TestSecurityNoTokensInLogs runs the daemon with debug logging against the
// sim, whose IMDS issues the managed identity's tokens, makes it call the
// cloud (fill, refill under injected errors) and the plugin allocate with
// debug logging into a file; no token, and no Authorization header, may
// appear in either log.
func TestSecurityNoTokensInLogs(t *testing.T) {
	nstest.RequireRoot(t)
	s, c := secCluster(t, 1, func(c *config.Config) {
		c.LogLevel = config.LogDebug
		c.WarmIPTarget, c.IPAddressCount, c.BatchSize = 2, 2, 2
	})
	n := c.Nodes[0]

	// A token of our own, asked from inside the node like the daemon does:
	// it proves that tokenShape matches what IMDS hands out.
	own := imdsToken(t, n)
	if !tokenShape.MatchString(own) {
		t.Fatalf("IMDS token %q does not match %s: the check below would be blind", own, tokenShape)
	}

	bin, err := filepath.Abs("../bin/vnet-cni")
	if err != nil {
		t.Fatal(err)
	}
	pluginLog := filepath.Join(t.TempDir(), "vnet-cni.log")
	conf := badConf(t, n, "1.0.0", map[string]any{"logFile": pluginLog, "logLevel": "debug"})
	// Injected errors make the daemon log failed cloud calls as well.
	s.ARM().SetFaults(arm.Faults{Errors: map[string]arm.ErrorFault{
		arm.AllOperations: {Rate: 0.3, Status: 503, Code: "ServerBusy"},
	}})
	for i := range 6 {
		p, err := n.NewPod("default", fmt.Sprintf("tok%d", i))
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{
			"CNI_COMMAND": "ADD", "CNI_CONTAINERID": p.ContainerID, "CNI_NETNS": p.NSPath, "CNI_IFNAME": "eth0",
			"CNI_PATH": filepath.Dir(bin), "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + p.Name,
		}
		out := badRun(t, n, bin, badCall{env: env, stdin: conf})
		if out.exitCode != 0 {
			t.Logf("ADD %s: %s", p.Name, out.stdout)
		}
		env["CNI_COMMAND"] = "DEL"
		badRun(t, n, bin, badCall{env: env, stdin: conf})
	}
	s.ARM().SetFaults(arm.Faults{})
	stats := s.ARM().Stats()
	if stats.Total == 0 {
		t.Fatal("the daemon made no cloud call: nothing was authenticated")
	}
	t.Logf("ARM requests: %d (%d errors)", stats.Total, stats.Errors)

	for _, path := range []string{n.LogPath, pluginLog} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 {
			t.Fatalf("%s is empty", path)
		}
		if m := tokenShape.Find(data); m != nil {
			t.Errorf("%s contains a token: %s", path, m)
		}
		for _, bad := range []string{own, "Bearer ", "access_token", "Authorization"} {
			if bytes.Contains(data, []byte(bad)) {
				t.Errorf("%s contains %q", path, bad)
			}
		}
		t.Logf("%s: %d bytes, %d lines, no token", filepath.Base(path), len(data), bytes.Count(data, []byte("\n")))
	}
}

// imdsToken asks the node's IMDS for an ARM token, as azidentity does.
func imdsToken(t *testing.T, n *cluster.Node) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: nsnet.DialContextIn(n.NSPath)}, Timeout: 5 * time.Second}
	req, err := http.NewRequest(http.MethodGet,
		"http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource="+sim.Audience, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("imds token: %v %q", err, tok.AccessToken)
	}
	return tok.AccessToken
}

// spoofPod is a pod with what a frame needs about it.
type spoofPod struct {
	p   *cluster.Pod
	mac net.HardwareAddr
}

func newSpoofPod(t *testing.T, n *cluster.Node, name string) spoofPod {
	t.Helper()
	p, err := n.NewPod("default", name)
	if err != nil {
		t.Fatal(err)
	}
	res, err := n.Add(context.Background(), p)
	if err != nil {
		t.Fatalf("ADD %s: %v", name, err)
	}
	for _, ifc := range res.Interfaces {
		if ifc.Sandbox != "" {
			mac, err := net.ParseMAC(ifc.Mac)
			if err != nil {
				t.Fatal(err)
			}
			return spoofPod{p: p, mac: mac}
		}
	}
	t.Fatalf("no pod interface in the result of %s", name)
	return spoofPod{}
}

// gatewayMAC is the MAC with which Azure (and the sim's fabric) answers ARP
// for every address outside the node.
var gatewayMAC = net.HardwareAddr{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sendRaw sends frame on the pod's eth0 through an AF_PACKET socket created
// inside the pod's namespace, as a process in the pod could.
func sendRaw(t *testing.T, p *cluster.Pod, frame []byte) {
	t.Helper()
	err := nsnet.Do(p.NSPath, func() error {
		l, err := netlink.LinkByName(p.IfName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6, Protocol: htons(binary.BigEndian.Uint16(frame[12:14]))}
		copy(sa.Addr[:], frame[0:6])
		return unix.Sendto(fd, frame, 0, sa)
	})
	if err != nil {
		t.Fatalf("send raw frame from %s: %v", p.Name, err)
	}
}

// sniffer captures the frames that arrive on a pod's eth0 and reports
// whether one contains marker.
type sniffer struct {
	fd int
}

func newSniffer(t *testing.T, p *cluster.Pod) *sniffer {
	t.Helper()
	var s sniffer
	err := nsnet.Do(p.NSPath, func() error {
		l, err := netlink.LinkByName(p.IfName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_ALL)}); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		s.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("sniffer in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return &s
}

// seen reads frames for d and reports whether one held marker.
func (s *sniffer) seen(marker []byte, d time.Duration) bool {
	buf := make([]byte, 9000)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			continue // timeout
		}
		if bytes.Contains(buf[:n], marker) {
			return true
		}
	}
	return false
}

// udpFrame builds an Ethernet/IPv4/UDP frame whose payload is marker.
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, marker []byte) []byte {
	udpLen := 8 + len(marker)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], src.AsSlice())
	copy(ip[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	udp := make([]byte, 8, udpLen)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 40001)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	udp = append(udp, marker...) // checksum 0: none, allowed over IPv4
	frame := append(append(append([]byte{}, dstMAC...), srcMAC...), 0x08, 0x00)
	return append(append(frame, ip...), udp...)
}

// arpFrame builds an ARP reply from (sha, spa) to (tha, tpa); the frame is
// padded with marker so the sniffer can recognise it.
func arpFrame(srcMAC, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr, marker []byte) []byte {
	frame := append(append(append([]byte{}, tha...), srcMAC...), 0x08, 0x06)
	frame = append(frame, 0, 1, 8, 0, 6, 4, 0, 2)
	frame = append(frame, sha...)
	frame = append(frame, spa.AsSlice()...)
	frame = append(frame, tha...)
	frame = append(frame, tpa.AsSlice()...)
	return append(frame, marker...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestSecuritySpoofing: a pod cannot use another pod's IP or MAC. Raw
// frames sent from pod a1 on node0 with a2's address, a2's MAC, or an ARP
// claim for a2's address, towards a pod on the same node (a3) and on the
// other node (b), never arrive; the same frames with a1's own identity do
// (the control that proves the probe works), and the bridge does not learn
// a2's MAC on a1's port.
func TestSecuritySpoofing(t *testing.T) {
	nstest.RequireRoot(t)
	_, c := secCluster(t, 2, nil)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	a1 := newSpoofPod(t, n0, "a1")
	a2 := newSpoofPod(t, n0, "a2")
	a3 := newSpoofPod(t, n0, "a3")
	b := newSpoofPod(t, n1, "b")
	sniff := map[string]*sniffer{"a3": newSniffer(t, a3.p), "b": newSniffer(t, b.p)}
	dst := map[string]spoofPod{"a3": a3, "b": b}
	// Frames to the same node go to the pod's MAC; frames to another node
	// to the gateway's.
	dstMAC := map[string]net.HardwareAddr{"a3": a3.mac, "b": gatewayMAC}

	tests := []struct {
		name      string
		to        string
		srcMAC    net.HardwareAddr
		srcIP     netip.Addr
		arp       bool
		delivered bool
	}{
		{name: "control: own identity, same node", to: "a3", srcMAC: a1.mac, srcIP: a1.p.IP, delivered: true},
		{name: "control: own identity, other node", to: "b", srcMAC: a1.mac, srcIP: a1.p.IP, delivered: true},
		{name: "control: own ARP, same node", to: "a3", srcMAC: a1.mac, srcIP: a1.p.IP, arp: true, delivered: true},
		{name: "another pod's IP, same node", to: "a3", srcMAC: a1.mac, srcIP: a2.p.IP},
		{name: "another pod's IP, other node", to: "b", srcMAC: a1.mac, srcIP: a2.p.IP},
		{name: "another node's pod IP, other node", to: "b", srcMAC: a1.mac, srcIP: b.p.IP},
		{name: "another pod's MAC, same node", to: "a3", srcMAC: a2.mac, srcIP: a1.p.IP},
		{name: "another pod's MAC, other node", to: "b", srcMAC: a2.mac, srcIP: a1.p.IP},
		{name: "ARP claiming another pod's IP, same node", to: "a3", srcMAC: a1.mac, srcIP: a2.p.IP, arp: true},
		{name: "ARP with another pod's MAC, same node", to: "a3", srcMAC: a2.mac, srcIP: a1.p.IP, arp: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			marker := make([]byte, 16)
			if _, err := rand.Read(marker); err != nil {
				t.Fatal(err)
			}
			to := dst[tt.to]
			var frame []byte
			if tt.arp {
				frame = arpFrame(tt.srcMAC, tt.srcMAC, tt.srcIP, to.mac, to.p.IP, marker)
			} else {
				frame = udpFrame(tt.srcMAC, dstMAC[tt.to], tt.srcIP, to.p.IP, marker)
			}
			got := false
			for range 3 {
				sendRaw(t, a1.p, frame)
				if got = sniff[tt.to].seen(marker, 300*time.Millisecond); got {
					break
				}
			}
			if got != tt.delivered {
				t.Errorf("frame from a1 (mac %s, ip %s) to %s delivered: %v, want %v", tt.srcMAC, tt.srcIP, tt.to, got, tt.delivered)
			}
		})
	}
	t.Run("the bridge did not learn a2's MAC on a1's port", func(t *testing.T) {
		err := n0.InNode(func() error {
			neighs, err := netlink.NeighList(0, unix.AF_BRIDGE)
			if err != nil {
				return err
			}
			for _, ne := range neighs {
				if !bytes.Equal(ne.HardwareAddr, a2.mac) {
					continue
				}
				l, err := netlink.LinkByIndex(ne.LinkIndex)
				if err != nil {
					return err
				}
				if want := hostVethOf(a2.p); l.Attrs().Name != want {
					return fmt.Errorf("fdb: %s on %s, want %s", a2.mac, l.Attrs().Name, want)
				}
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
}

func hostVethOf(p *cluster.Pod) string {
	for _, ifc := range p.Result.Interfaces {
		if ifc.Sandbox == "" {
			return ifc.Name
		}
	}
	return ""
}
