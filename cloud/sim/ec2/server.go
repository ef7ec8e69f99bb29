// Package ec2 is the simulated Amazon EC2 control plane of one account and
// region: the EC2 Query API subset that manages network interfaces and
// their private addresses, with EC2's semantics (asynchronous attachment,
// per-instance-type limits, EC2's error codes, per-action token buckets,
// Signature Version 4 against instance-role credentials) and run-time fault
// injection. IMDSv2 for each instance is in package ec2imds.
package ec2

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// action describes one API action.
type action struct {
	describe bool
	handle   func(s *Server, p params) (response, *apiError)
}

// actions is the API subset, by Action name.
var actions = map[string]action{
	"DescribeInstances":               {describe: true, handle: (*Server).describeInstances},
	"DescribeInstanceTypes":           {describe: true, handle: (*Server).describeInstanceTypes},
	"DescribeSubnets":                 {describe: true, handle: (*Server).describeSubnets},
	"DescribeNetworkInterfaces":       {describe: true, handle: (*Server).describeENIs},
	"CreateNetworkInterface":          {handle: (*Server).createENI},
	"AttachNetworkInterface":          {handle: (*Server).attachENI},
	"DetachNetworkInterface":          {handle: (*Server).detachENI},
	"DeleteNetworkInterface":          {handle: (*Server).deleteENI},
	"ModifyNetworkInterfaceAttribute": {handle: (*Server).modifyENIAttribute},
	"AssignPrivateIpAddresses":        {handle: (*Server).assignIPs},
	"UnassignPrivateIpAddresses":      {handle: (*Server).unassignIPs},
	"CreateTags":                      {handle: (*Server).createTags},
}

// Server is the simulated EC2 API of one account in one region.
type Server struct {
	cfg     Config
	log     *slog.Logger
	creds   *credStore
	limiter *limiter
	stats   simadmin.Counters
	changed chan struct{}

	faultsMu sync.Mutex
	faults   Faults

	mu        sync.Mutex
	closed    bool
	subnets   map[string]*subnet
	instances map[string]*instance
	enis      map[string]*eni
	owner     map[netip.Addr]string // address -> eni id
	timers    map[*time.Timer]bool
}

type subnet struct {
	id   string
	cidr netip.Prefix
	az   string
	tags map[string]string
}

type instance struct {
	id, typ, subnetID, primaryENI string
	launched                      time.Time
	tags                          map[string]string
}

// New validates cfg and creates the account with its instances.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		creds:     newCredStore(cfg.StaticCredentials, cfg.CredentialLifetime),
		limiter:   newLimiter(cfg.Throttle),
		changed:   make(chan struct{}, 1),
		faults:    cfg.Faults.clone(now),
		subnets:   map[string]*subnet{},
		instances: map[string]*instance{},
		enis:      map[string]*eni{},
		owner:     map[netip.Addr]string{},
		timers:    map[*time.Timer]bool{},
	}
	for _, sp := range cfg.Subnets {
		az := sp.AvailabilityZone
		if az == "" {
			az = cfg.Region + "a"
		}
		s.subnets[sp.ID] = &subnet{id: sp.ID, cidr: sp.CIDR, az: az, tags: map[string]string{}}
	}
	for _, in := range cfg.Instances {
		id := in.ENIID
		if id == "" {
			id = newID("eni")
		}
		s.enis[id] = &eni{
			id: id, subnetID: in.SubnetID, mac: slices.Clone(in.MAC),
			description: "Primary network interface", sourceDestCheck: true,
			ips:  []privateIP{{addr: in.Primary, primary: true, since: now.Add(-time.Hour)}},
			tags: map[string]string{},
			attachment: &attachment{
				id: newID("eni-attach"), instanceID: in.ID, device: 0, status: "attached",
				deleteOnTermination: true, attachTime: now,
			},
		}
		s.owner[in.Primary] = id
		s.instances[in.ID] = &instance{id: in.ID, typ: in.Type, subnetID: in.SubnetID, primaryENI: id, launched: now, tags: map[string]string{}}
	}
	return s, nil
}

// newID returns an EC2-style id: prefix, a dash and 17 hex digits.
func newID(prefix string) string {
	return prefix + "-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:17]
}

// Handler returns the EC2 API. The caller serves it over TLS.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveEC2) }

// Region is the simulated region.
func (s *Server) Region() string { return s.cfg.Region }

// Changed is signalled (coalesced, never blocking) after every change.
func (s *Server) Changed() <-chan struct{} { return s.changed }

// InstanceCredentials returns the current role credentials of an instance,
// as its IMDS hands them out.
func (s *Server) InstanceCredentials(instanceID string) (Credentials, error) {
	s.mu.Lock()
	_, ok := s.instances[instanceID]
	s.mu.Unlock()
	if !ok {
		return Credentials{}, errors.New("instance " + instanceID + " does not exist")
	}
	return s.creds.forInstance(instanceID, time.Now()), nil
}

// SetFaults replaces the active faults. A storm's Duration starts now.
// Invalid faults are logged and ignored; AdminHandler validates first.
func (s *Server) SetFaults(f Faults) {
	if err := f.validate(); err != nil {
		s.log.Warn("ignoring invalid faults", "err", err)
		return
	}
	c := f.clone(time.Now())
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	s.faults = c
}

// Faults returns a copy of the active faults.
func (s *Server) Faults() Faults {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	return s.faults.clone(time.Now())
}

// Stats returns a copy of the request counters.
func (s *Server) Stats() Stats { return s.stats.Snapshot() }

// ResetStats zeroes the request counters.
func (s *Server) ResetStats() { s.stats.Reset() }

// Close stops the attachment timers; attachments in progress stay where
// they are until the state is read again.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for t := range s.timers {
		t.Stop()
	}
	clear(s.timers)
}

func (s *Server) notifyLocked() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// wakeAfterLocked advances the state after d, so that Changed fires when
// an attachment completes even if nobody reads.
func (s *Server) wakeAfterLocked(d time.Duration) {
	if s.closed {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		s.mu.Lock() // held by the caller until t is stored
		defer s.mu.Unlock()
		delete(s.timers, t)
		s.advanceLocked(time.Now())
	})
	s.timers[t] = true
}

const maxBody = 1 << 20

// serveEC2 runs a request through parsing, SigV4, the Version check,
// faults and the action's token bucket, then the action, and counts it.
func (s *Server) serveEC2(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &simadmin.StatusRecorder{ResponseWriter: w}
	reqID := uuid.NewString()
	name := "Unknown"
	defer func() {
		if rec.Status == 0 {
			rec.Status = simadmin.StatusClientClosed
		}
		s.stats.Add(name, rec.Status, rec.Throttled)
		s.log.Debug("ec2 request", "action", name, "status", rec.Status, "duration", time.Since(start))
	}()
	fail := func(e *apiError) {
		rec.Throttled = e.code == CodeRequestLimitExceeded
		e.write(rec, reqID)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		fail(clientError("InvalidRequest", "The request body could not be read or is too large"))
		return
	}
	form, err := url.ParseQuery(string(body))
	if r.Method != http.MethodPost || err != nil {
		fail(clientError("InvalidRequest", "The simulated EC2 accepts form-encoded POST requests only"))
		return
	}
	p := params(form)
	act, known := actions[p.get("Action")]
	if known {
		name = p.get("Action")
	}
	if e := s.authenticate(r, body, start); e != nil {
		fail(e)
		return
	}
	switch {
	case p.get("Action") == "":
		fail(errMissing("Action"))
		return
	case !known:
		fail(clientError(CodeInvalidAction, "The action %s is not valid for this web service.", p.get("Action")))
		return
	case p.get("Version") == "":
		fail(errMissing("Version"))
		return
	case p.get("Version") != APIVersion:
		fail(clientError("InvalidParameterValue", "The simulated EC2 answers Version %s only, not %s", APIVersion, p.get("Version")))
		return
	}
	if e := s.injectFaults(r.Context(), name); e != nil {
		fail(e)
		return
	}
	if r.Context().Err() != nil {
		return
	}
	if ok, _ := s.limiter.take(name, time.Now()); !ok {
		fail(newError(http.StatusServiceUnavailable, CodeRequestLimitExceeded, "Request limit exceeded."))
		return
	}
	if dry, _, _ := p.boolean("DryRun"); dry {
		fail(newError(http.StatusPreconditionFailed, CodeDryRunOperation, "Request would have succeeded, but DryRun flag is set."))
		return
	}
	resp, e := act.handle(s, p)
	if e != nil {
		fail(e)
		return
	}
	resp.header().RequestID = reqID
	writeXMLElement(rec, xml.Name{Space: Namespace, Local: name + "Response"}, resp)
}

// injectFaults applies the active faults: a storm, then latency, then
// error injection.
func (s *Server) injectFaults(ctx context.Context, name string) *apiError {
	now := time.Now()
	s.faultsMu.Lock()
	inStorm := s.faults.Storm != nil && now.Before(s.faults.Storm.Until)
	delay := s.faults.latency(name)
	ef, hasErr := s.faults.errorFor(name)
	s.faultsMu.Unlock()
	if inStorm {
		return newError(http.StatusServiceUnavailable, CodeRequestLimitExceeded, "Request limit exceeded.")
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil
		}
	}
	if hasErr && ef.Rate > 0 && rand.Float64() < ef.Rate {
		msg := ef.Message
		if msg == "" {
			msg = "Injected fault."
		}
		return newError(ef.Status, ef.Code, "%s", msg)
	}
	return nil
}

// newMACLocked returns an unused MAC in the 0e: locally administered range EC2
// uses.
func (s *Server) newMACLocked() net.HardwareAddr {
	for {
		id := uuid.New()
		mac := net.HardwareAddr{0x0e, id[0], id[1], id[2], id[3], id[4]}
		used := false
		for _, e := range s.enis {
			used = used || slices.Equal(e.mac, mac)
		}
		if !used {
			return mac
		}
	}
}
