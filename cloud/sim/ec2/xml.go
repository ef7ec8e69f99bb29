package ec2

// Namespace is the XML namespace of EC2's 2016-11-15 API version.
const Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// APIVersion is the only Version the simulator answers.
const APIVersion = "2016-11-15"

// response is implemented by every answer body: the writer sets the
// request id and encodes it as <Action>Response in EC2's namespace.
type response interface{ header() *ResponseHeader }

// ResponseHeader is the request id of an answer. It is exported only
// because encoding/xml cannot marshal an embedded unexported struct.
type ResponseHeader struct {
	RequestID string `xml:"requestId"`
}

func (h *ResponseHeader) header() *ResponseHeader { return h }

type returnResponse struct {
	ResponseHeader
	Return bool `xml:"return"`
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlGroup struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type xmlAttachment struct {
	AttachmentID        string `xml:"attachmentId"`
	InstanceID          string `xml:"instanceId"`
	InstanceOwnerID     string `xml:"instanceOwnerId"`
	DeviceIndex         int    `xml:"deviceIndex"`
	NetworkCardIndex    int    `xml:"networkCardIndex"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlPrivateIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	PrivateDNSName   string `xml:"privateDnsName"`
	Primary          bool   `xml:"primary"`
}

type xmlENI struct {
	NetworkInterfaceID string         `xml:"networkInterfaceId"`
	SubnetID           string         `xml:"subnetId"`
	VPCID              string         `xml:"vpcId"`
	AvailabilityZone   string         `xml:"availabilityZone"`
	Description        string         `xml:"description"`
	OwnerID            string         `xml:"ownerId"`
	RequesterManaged   bool           `xml:"requesterManaged"`
	Status             string         `xml:"status"`
	MACAddress         string         `xml:"macAddress"`
	PrivateIPAddress   string         `xml:"privateIpAddress"`
	PrivateDNSName     string         `xml:"privateDnsName"`
	SourceDestCheck    bool           `xml:"sourceDestCheck"`
	InterfaceType      string         `xml:"interfaceType"`
	Groups             []xmlGroup     `xml:"groupSet>item"`
	Attachment         *xmlAttachment `xml:"attachment,omitempty"`
	PrivateIPs         []xmlPrivateIP `xml:"privateIpAddressesSet>item"`
	Tags               []xmlTag       `xml:"tagSet>item"`
}

type xmlInstanceState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlPlacement struct {
	AvailabilityZone string `xml:"availabilityZone"`
	Tenancy          string `xml:"tenancy"`
}

type xmlInstance struct {
	InstanceID        string           `xml:"instanceId"`
	ImageID           string           `xml:"imageId"`
	InstanceState     xmlInstanceState `xml:"instanceState"`
	PrivateDNSName    string           `xml:"privateDnsName"`
	InstanceType      string           `xml:"instanceType"`
	LaunchTime        string           `xml:"launchTime"`
	Placement         xmlPlacement     `xml:"placement"`
	SubnetID          string           `xml:"subnetId"`
	VPCID             string           `xml:"vpcId"`
	PrivateIPAddress  string           `xml:"privateIpAddress"`
	SourceDestCheck   bool             `xml:"sourceDestCheck"`
	Architecture      string           `xml:"architecture"`
	NetworkInterfaces []xmlENI         `xml:"networkInterfaceSet>item"`
	Tags              []xmlTag         `xml:"tagSet>item"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type describeInstancesResponse struct {
	ResponseHeader
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type xmlNetworkCard struct {
	NetworkCardIndex         int `xml:"networkCardIndex"`
	MaximumNetworkInterfaces int `xml:"maximumNetworkInterfaces"`
}

type xmlNetworkInfo struct {
	MaximumNetworkInterfaces  int              `xml:"maximumNetworkInterfaces"`
	MaximumNetworkCards       int              `xml:"maximumNetworkCards"`
	DefaultNetworkCardIndex   int              `xml:"defaultNetworkCardIndex"`
	NetworkCards              []xmlNetworkCard `xml:"networkCards>item"`
	IPv4AddressesPerInterface int              `xml:"ipv4AddressesPerInterface"`
	IPv6AddressesPerInterface int              `xml:"ipv6AddressesPerInterface"`
	IPv6Supported             bool             `xml:"ipv6Supported"`
	EnaSupport                string           `xml:"enaSupport"`
}

type xmlInstanceType struct {
	InstanceType string         `xml:"instanceType"`
	NetworkInfo  xmlNetworkInfo `xml:"networkInfo"`
}

type describeInstanceTypesResponse struct {
	ResponseHeader
	InstanceTypes []xmlInstanceType `xml:"instanceTypeSet>item"`
}

type xmlSubnet struct {
	SubnetID                string   `xml:"subnetId"`
	SubnetArn               string   `xml:"subnetArn"`
	State                   string   `xml:"state"`
	VPCID                   string   `xml:"vpcId"`
	OwnerID                 string   `xml:"ownerId"`
	CIDRBlock               string   `xml:"cidrBlock"`
	AvailableIPAddressCount int      `xml:"availableIpAddressCount"`
	AvailabilityZone        string   `xml:"availabilityZone"`
	DefaultForAz            bool     `xml:"defaultForAz"`
	MapPublicIPOnLaunch     bool     `xml:"mapPublicIpOnLaunch"`
	Tags                    []xmlTag `xml:"tagSet>item"`
}

type describeSubnetsResponse struct {
	ResponseHeader
	Subnets []xmlSubnet `xml:"subnetSet>item"`
}

type describeENIsResponse struct {
	ResponseHeader
	ENIs      []xmlENI `xml:"networkInterfaceSet>item"`
	NextToken string   `xml:"nextToken,omitempty"`
}

type createENIResponse struct {
	ResponseHeader
	ENI xmlENI `xml:"networkInterface"`
}

type attachENIResponse struct {
	ResponseHeader
	AttachmentID     string `xml:"attachmentId"`
	NetworkCardIndex int    `xml:"networkCardIndex"`
}

type xmlAssigned struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
}

type assignResponse struct {
	ResponseHeader
	NetworkInterfaceID string        `xml:"networkInterfaceId"`
	Assigned           []xmlAssigned `xml:"assignedPrivateIpAddressesSet>item"`
}
