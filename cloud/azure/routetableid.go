package azure

import (
	"fmt"
	"strings"
)

// ParseRouteTableID splits a route table's resource ID,
// /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/routeTables/NAME
// (segment names in any letter case, as ARM accepts them).
func ParseRouteTableID(id string) (RouteTableRef, error) {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) != 8 || !strings.EqualFold(parts[0], "subscriptions") || !strings.EqualFold(parts[2], "resourceGroups") ||
		!strings.EqualFold(parts[4], "providers") || !strings.EqualFold(parts[5], "Microsoft.Network") ||
		!strings.EqualFold(parts[6], "routeTables") || parts[1] == "" || parts[3] == "" || parts[7] == "" {
		return RouteTableRef{}, fmt.Errorf("%q is not a route table's resource ID (/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/routeTables/NAME)", id)
	}
	return RouteTableRef{ID: id, SubscriptionID: parts[1], ResourceGroup: parts[3], Name: parts[7]}, nil
}
