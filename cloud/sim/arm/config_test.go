package arm

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no subscription", func(c *Config) { c.SubscriptionID = "" }, "subscription id is empty"},
		{"subnet outside vnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("192.168.0.0/24") }, "outside the vnet"},
		{"subnet too small", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/30") }, "smaller than /29"},
		{"subnet not canonical", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.1/24") }, "not a canonical"},
		{"reserved primary", func(c *Config) { c.NICs[0].Primary = netip.MustParseAddr("10.0.0.1") }, "not a usable address"},
		{"duplicate primary", func(c *Config) { c.NICs[1].Primary = c.NICs[0].Primary }, "used twice"},
		{"duplicate nic", func(c *Config) { c.NICs[1].Name = "NODE-0" }, "listed twice"},
		{"bad mac", func(c *Config) { c.NICs[0].MAC = net.HardwareAddr{1, 2} }, "6-byte"},
		{"bad fault", func(c *Config) { c.Faults.Errors = map[string]ErrorFault{"*": {Rate: 1, Status: 200, Code: "X"}} }, "want 4xx or 5xx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.mutate(&cfg)
			s, err := New(cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				s.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestAddressing(t *testing.T) {
	p := netip.MustParsePrefix("10.1.2.128/26")
	tests := []struct {
		addr   string
		usable bool
	}{
		{"10.1.2.128", false}, {"10.1.2.129", false}, {"10.1.2.131", false},
		{"10.1.2.132", true}, {"10.1.2.190", true}, {"10.1.2.191", false}, {"10.1.2.192", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := usable(p, netip.MustParseAddr(tt.addr)); got != tt.usable {
				t.Errorf("usable(%s) = %v, want %v", tt.addr, got, tt.usable)
			}
		})
	}
}
