package arm

import "github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"

// Stats counts the requests that reached the API (see simadmin.Stats).
type Stats = simadmin.Stats
