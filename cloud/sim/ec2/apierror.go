package ec2

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"net/http"
)

// EC2 error codes answered by the simulator.
const (
	CodeAuthFailure                   = "AuthFailure"
	CodeRequestExpired                = "RequestExpired"
	CodeRequestLimitExceeded          = "RequestLimitExceeded"
	CodeInvalidAction                 = "InvalidAction"
	CodeMissingParameter              = "MissingParameter"
	CodeInvalidParameterValue         = "InvalidParameterValue"
	CodeInvalidParameterCombination   = "InvalidParameterCombination"
	CodeDryRunOperation               = "DryRunOperation"
	CodeInvalidENIIDNotFound          = "InvalidNetworkInterfaceID.NotFound"
	CodeInvalidENIIDMalformed         = "InvalidNetworkInterfaceID.Malformed"
	CodeInvalidENIInUse               = "InvalidNetworkInterface.InUse"
	CodeInvalidInstanceIDNotFound     = "InvalidInstanceID.NotFound"
	CodeInvalidInstanceIDMalformed    = "InvalidInstanceID.Malformed"
	CodeInvalidSubnetIDNotFound       = "InvalidSubnetID.NotFound"
	CodeInvalidAttachmentIDNotFound   = "InvalidAttachmentID.NotFound"
	CodeInvalidInstanceType           = "InvalidInstanceType"
	CodeInvalidIPAddressInUse         = "InvalidIPAddress.InUse"
	CodeAttachmentLimitExceeded       = "AttachmentLimitExceeded"
	CodePrivateIPAddressLimitExceeded = "PrivateIpAddressLimitExceeded"
	CodeInsufficientFreeAddresses     = "InsufficientFreeAddressesInSubnet"
	CodeOperationNotPermitted         = "OperationNotPermitted"
	CodeIncorrectState                = "IncorrectState"
	CodeInternalError                 = "InternalError"
)

// apiError is an EC2 error answer.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func newError(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// clientError is a 400 answer, what EC2 sends for almost every error.
func clientError(code, format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, code, format, args...)
}

// errorResponse is EC2's error envelope.
type errorResponse struct {
	XMLName   xml.Name    `xml:"Response"`
	Errors    []errorItem `xml:"Errors>Error"`
	RequestID string      `xml:"RequestID"`
}

type errorItem struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func (e *apiError) write(w http.ResponseWriter, requestID string) {
	writeXML(w, e.status, errorResponse{Errors: []errorItem{{Code: e.code, Message: e.message}}, RequestID: requestID})
}

func writeXML(w http.ResponseWriter, status int, v any) {
	body, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, "marshal response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

// writeXMLElement sends v as a 200 answer with the root element name.
func writeXMLElement(w http.ResponseWriter, name xml.Name, v any) {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	if err := xml.NewEncoder(&b).EncodeElement(v, xml.StartElement{Name: name}); err != nil {
		http.Error(w, "marshal response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
}

func errENINotFound(id string) *apiError {
	return clientError(CodeInvalidENIIDNotFound, "The networkInterface ID '%s' does not exist", id)
}

func errInstanceNotFound(id string) *apiError {
	return clientError(CodeInvalidInstanceIDNotFound, "The instance ID '%s' does not exist", id)
}

func errMissing(name string) *apiError {
	return clientError(CodeMissingParameter, "The request must contain the parameter %s", name)
}

func errInvalidValue(format string, args ...any) *apiError {
	return clientError(CodeInvalidParameterValue, format, args...)
}
