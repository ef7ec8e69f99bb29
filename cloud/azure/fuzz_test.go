package azure

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// FuzzParseInstance feeds arbitrary IMDS instance documents to the parser:
// no panic, and an accepted document yields a complete, consistent identity.
func FuzzParseInstance(f *testing.F) {
	f.Add([]byte(`{"compute":{"location":"westeurope","name":"node0","resourceGroupName":"rg","subscriptionId":"sub","vmId":"id"},"network":{"interface":[{"macAddress":"000D3A112233","ipv4":{"ipAddress":[{"privateIpAddress":"10.240.0.4"}],"subnet":[{"address":"10.240.0.0","prefix":"16"}]}}]}}`))
	f.Add([]byte(`{"compute":{"name":"n","resourceGroupName":"rg","subscriptionId":"s"},"network":{"interface":[{"macAddress":"00-0d-3a-11-22-33","ipv4":{"ipAddress":[{"privateIpAddress":"10.1.0.4"}],"subnet":[{"address":"10.240.0.0","prefix":"16"}]}}]}}`))
	f.Add([]byte(`{"compute":{"name":"n","resourceGroupName":"rg","subscriptionId":"s"},"network":{"interface":[{"macAddress":"00:0d:3a:11:22:33","ipv4":{"ipAddress":[{"privateIpAddress":"::1"}],"subnet":[{"address":"10.240.0.0","prefix":"-1"}]}}]}}`))
	f.Add([]byte(`{"compute":{},"network":{"interface":[]}}`))
	f.Add([]byte(`{"network":{"interface":[{"ipv4":{"subnet":[{"prefix":"99999999999999999999"}]}}]}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := parseInstance(body)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "imds: ") {
				t.Fatalf("error does not say where it comes from: %v", err)
			}
			return
		}
		switch {
		case in.SubscriptionID == "" || in.ResourceGroup == "" || in.VMName == "":
			t.Fatalf("accepted an incomplete identity: %+v", in)
		case len(in.MAC) != 12 || strings.ToLower(in.MAC) != in.MAC:
			t.Fatalf("accepted mac %q", in.MAC)
		case !in.PrimaryIP.Is4() || !in.Subnet.Contains(in.PrimaryIP) || in.Subnet != in.Subnet.Masked():
			t.Fatalf("accepted primary %s in subnet %s", in.PrimaryIP, in.Subnet)
		case in.Subnet.Bits() > 30:
			t.Fatalf("accepted subnet %s", in.Subnet)
		}
	})
}

// FuzzParseSubnetID: no panic; an accepted id names a resource group and a
// virtual network that are path segments of it.
func FuzzParseSubnetID(f *testing.F) {
	f.Add("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/nodes")
	f.Add("subscriptions/s/resourcegroups/rg/providers/Microsoft.Network/virtualnetworks/vnet/subnets/nodes/")
	f.Add("/subscriptions/s/resourceGroups//providers/x/virtualNetworks//subnets/")
	f.Add("////")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		rg, vnet, err := parseSubnetID(id)
		if err != nil {
			if rg != "" || vnet != "" {
				t.Fatalf("error with results %q %q", rg, vnet)
			}
			return
		}
		if strings.Contains(rg, "/") || strings.Contains(vnet, "/") {
			t.Fatalf("segments with a slash: %q %q", rg, vnet)
		}
		if !strings.Contains(id, "/"+rg+"/") || !strings.Contains(id, "/"+vnet+"/") {
			t.Fatalf("results %q %q are not segments of %q", rg, vnet, id)
		}
	})
}

// FuzzRetryAfter: whatever the headers say, the delay is never negative and
// never above maxRetryAfter (it overflowed to negative values and took
// dates decades ahead literally before the clamp).
func FuzzRetryAfter(f *testing.F) {
	f.Add("", "", "")
	f.Add("1500", "", "")
	f.Add("", "250", "7")
	f.Add("", "", "Wed, 21 Oct 2099 07:28:00 GMT")
	f.Add("9223372036854775807", "", "")
	f.Add("", "", "9223372036854775807")
	f.Add("-5", "abc", "-1")
	f.Fuzz(func(t *testing.T, ms, xms, ra string) {
		h := http.Header{}
		for k, v := range map[string]string{"retry-after-ms": ms, "x-ms-retry-after-ms": xms, "Retry-After": ra} {
			if v != "" {
				h.Set(k, v)
			}
		}
		d := retryAfter(h)
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("retryAfter(%q, %q, %q) = %s", ms, xms, ra, d)
		}
	})
}

// FuzzClassify builds ARM error answers (status, body, Retry-After) as the
// SDK turns them into errors and checks the classification: no panic, a
// *cloud.Error with a known kind, throttling with a positive bounded delay.
func FuzzClassify(f *testing.F) {
	f.Add(429, []byte(`{"error":{"code":"SubscriptionRequestsThrottled","message":"slow down"}}`), "3")
	f.Add(400, []byte(`{"error":{"code":"SubnetIsFull","message":"full"}}`), "")
	f.Add(400, []byte(`{"error":{"code":"PrivateIPAddressIsAllocated","message":"IP configuration x is using the private IP address 10.0.0.9 which is already allocated to resource y."}}`), "")
	f.Add(400, []byte(`{"error":{"code":"NetworkInterfaceIpConfigurationCountExceedsLimit"}}`), "")
	f.Add(412, []byte(`{"error":{"code":"PreconditionFailed"}}`), "")
	f.Add(409, []byte(`{"error":{"code":"AnotherOperationInProgress"}}`), "")
	f.Add(503, []byte(`{"error":{"code":"ServerBusy"}}`), "9223372036854775807")
	f.Add(500, []byte(`not json`), "")
	f.Add(404, []byte(``), "")
	f.Add(429, []byte(`{"error":null}`), "-3")
	f.Fuzz(func(t *testing.T, status int, body []byte, ra string) {
		if status < 100 || status > 999 {
			return
		}
		req, _ := http.NewRequest(http.MethodPut, "https://management.azure.com/x", nil)
		resp := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body)), Request: req}
		if ra != "" {
			resp.Header.Set("Retry-After", ra)
		}
		err := classify("NetworkInterfaces_CreateOrUpdate", runtime.NewResponseError(resp))
		var ce *cloud.Error
		if !errors.As(err, &ce) {
			t.Fatalf("classify returned %T", err)
		}
		if ce.Kind < cloud.Fatal || ce.Kind > cloud.Denied {
			t.Fatalf("unknown kind %d", ce.Kind)
		}
		if ce.RetryAfter < 0 || ce.RetryAfter > maxRetryAfter {
			t.Fatalf("retry after %s", ce.RetryAfter)
		}
		if status == http.StatusTooManyRequests && ce.Kind == cloud.Throttled && ce.RetryAfter < time.Millisecond {
			t.Fatalf("throttled without a delay")
		}
		if ce.Error() == "" {
			t.Fatal("empty message")
		}
		if len(ce.Message) > cloud.MaxMessage || strings.ContainsAny(ce.Message, "\n\r") || !utf8.ValidString(ce.Message) {
			t.Fatalf("message %q: longer than %d bytes, several lines or not UTF-8", ce.Message, cloud.MaxMessage)
		}
	})
}
