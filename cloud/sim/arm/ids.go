package arm

import "net/http"

// Resource types as ARM reports them.
const (
	typeNIC        = "Microsoft.Network/networkInterfaces"
	typeIPConfig   = "Microsoft.Network/networkInterfaces/ipConfigurations"
	typeVNet       = "Microsoft.Network/virtualNetworks"
	typeSubnet     = "Microsoft.Network/virtualNetworks/subnets"
	typeRouteTable = "Microsoft.Network/routeTables"
	typeRoute      = "Microsoft.Network/routeTables/routes"
)

func (s *Server) groupPrefix() string {
	return "/subscriptions/" + s.cfg.SubscriptionID + "/resourceGroups/" + s.cfg.ResourceGroup + "/providers/"
}

func (s *Server) nicID(name string) string {
	return s.groupPrefix() + typeNIC + "/" + name
}

func (s *Server) ipConfigID(nicName, name string) string {
	return s.nicID(nicName) + "/ipConfigurations/" + name
}

func (s *Server) vnetID() string {
	return s.groupPrefix() + typeVNet + "/" + s.cfg.VNetName
}

func (s *Server) subnetID() string {
	return s.vnetID() + "/subnets/" + s.cfg.SubnetName
}

func (s *Server) vmID(name string) string {
	return s.groupPrefix() + "Microsoft.Compute/virtualMachines/" + name
}

func (s *Server) routeTableID(name string) string {
	return s.groupPrefix() + typeRouteTable + "/" + name
}

func (s *Server) routeID(table, name string) string {
	return s.routeTableID(table) + "/routes/" + name
}

// operationURL is the Azure-AsyncOperation (kind "operations") or Location
// (kind "operationResults") URL of an operation, on the host r came to.
func (s *Server) operationURL(r *http.Request, kind, id string) string {
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	return scheme + "://" + r.Host + "/subscriptions/" + s.cfg.SubscriptionID + "/providers/Microsoft.Network/locations/" +
		s.cfg.Location + "/" + kind + "/" + id + "?api-version=" + r.URL.Query().Get("api-version")
}
