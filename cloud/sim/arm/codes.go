package arm

// ARM error codes the simulator answers with, for tests and callers that
// match on them. Most are Azure's documented or observed codes; the limit,
// primary-ipConfiguration and next-hop codes are inferred (Azure does not
// document them).
const (
	CodeMissingAPIVersion       = "MissingApiVersionParameter"
	CodeAuthenticationFailed    = "AuthenticationFailed"
	CodeInvalidToken            = "InvalidAuthenticationToken"
	CodeExpiredToken            = "ExpiredAuthenticationToken"
	CodeAuthorizationFailed     = "AuthorizationFailed"
	CodeInvalidTokenAudience    = "InvalidAuthenticationTokenAudience"
	CodeSubscriptionNotFound    = "SubscriptionNotFound"
	CodeResourceGroupNotFound   = "ResourceGroupNotFound"
	CodeResourceNotFound        = "ResourceNotFound"
	CodeNotFound                = "NotFound"
	CodeMethodNotAllowed        = "MethodNotAllowed"
	CodeInvalidRequestFormat    = "InvalidRequestFormat"
	CodeLocationRequired        = "LocationRequired"
	CodeInvalidResourceLocation = "InvalidResourceLocation"
	CodePreconditionFailed      = "PreconditionFailed"
	CodeThrottled               = "SubscriptionRequestsThrottled"
	// CodeRetryable is the top-level code of a write on a resource another
	// operation is updating; its detail is CodeAnotherOperation.
	CodeRetryable        = "RetryableError"
	CodeAnotherOperation = "RetryableErrorDueToAnotherOperation"

	CodeSubnetIsFull             = "SubnetIsFull"
	CodeAddressIsAllocated       = "PrivateIPAddressIsAllocated"
	CodeAddressNotInSubnet       = "PrivateIPAddressNotInSubnet"
	CodeAddressInReservedRange   = "PrivateIPAddressInReservedRange"
	CodeInvalidResourceReference = "InvalidResourceReference"
	CodePropertyChangeNotAllowed = "PropertyChangeNotAllowed"
	CodePrimaryDeleteNotAllowed  = "IpConfigDeleteNotSupported"
	CodeNoPrimaryIPConfig        = "NetworkInterfaceMustHavePrimaryIpConfiguration"
	CodeMultiplePrimaryIPConfigs = "NetworkInterfaceCannotHaveMultiplePrimaryIpConfigurations"
	CodeIPConfigLimit            = "IpConfigurationCountLimitReached"

	CodeRouteLimit             = "RouteCountLimitReached"
	CodeInvalidCIDR            = "InvalidCIDRNotation"
	CodeInvalidAddressPrefix   = "InvalidAddressPrefixFormat"
	CodeNextHopRequired        = "NextHopIpAddressRequired"
	CodeInvalidNextHop         = "InvalidNextHopIpAddress"
	CodeNextHopNotAllowed      = "NextHopIpAddressNotAllowed"
	CodeOperationFailedDefault = "InternalServerError"
)
