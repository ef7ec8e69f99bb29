package cluster

import "github.com/containernetworking/cni/pkg/types"

func typesGCAttachment(p *Pod) types.GCAttachment {
	return types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName}
}
