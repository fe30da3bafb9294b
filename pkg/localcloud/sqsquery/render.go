package sqsquery

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Query response documents: <ActionResponse><ActionResult>…</ActionResult>
// <ResponseMetadata><RequestId>…</RequestId></ResponseMetadata></ActionResponse>, lists
// flattened (one element per item, no wrapper).

type responseMetadata struct {
	RequestID string `xml:"RequestId"`
}

type response struct {
	XMLName  xml.Name
	Xmlns    string           `xml:"xmlns,attr"`
	Result   any              `xml:",omitempty"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type xmlAttribute struct {
	Name  string `xml:"Name"`
	Value string `xml:"Value"`
}

type xmlAttributeValue struct {
	StringValue string `xml:"StringValue,omitempty"`
	BinaryValue string `xml:"BinaryValue,omitempty"`
	DataType    string `xml:"DataType"`
}

type xmlMessageAttribute struct {
	Name  string            `xml:"Name"`
	Value xmlAttributeValue `xml:"Value"`
}

type xmlMessage struct {
	MessageID              string                `xml:"MessageId"`
	ReceiptHandle          string                `xml:"ReceiptHandle"`
	MD5OfBody              string                `xml:"MD5OfBody"`
	Body                   string                `xml:"Body"`
	Attributes             []xmlAttribute        `xml:"Attribute"`
	MD5OfMessageAttributes string                `xml:"MD5OfMessageAttributes,omitempty"`
	MessageAttributes      []xmlMessageAttribute `xml:"MessageAttribute"`
}

type xmlBatchError struct {
	ID          string `xml:"Id"`
	SenderFault bool   `xml:"SenderFault"`
	Code        string `xml:"Code"`
	Message     string `xml:"Message,omitempty"`
}

type jsonBatchError struct {
	ID          string `json:"Id"`
	SenderFault bool   `json:"SenderFault"`
	Code        string `json:"Code"`
	Message     string `json:"Message"`
}

func batchErrors(in []jsonBatchError) []xmlBatchError {
	out := make([]xmlBatchError, 0, len(in))
	for _, e := range in {
		out = append(out, xmlBatchError{ID: e.ID, SenderFault: e.SenderFault, Code: queryCode(e.Code), Message: e.Message})
	}
	return out
}

type idOnly struct {
	ID string `json:"Id"`
}

func sortedAttributes(m map[string]string) []xmlAttribute {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]xmlAttribute, 0, len(names))
	for _, n := range names {
		out = append(out, xmlAttribute{Name: n, Value: m[n]})
	}
	return out
}

// render turns the JSON response of action into its Query document; req is the JSON
// request sent (for what the JSON answer leaves out: the attributes' MD5 on send, the
// attribute names asked for on receive).
func render(action, requestID string, req request, body []byte) (any, error) {
	doc := response{XMLName: xml.Name{Local: action + "Response"}, Xmlns: namespace, Metadata: responseMetadata{RequestID: requestID}}
	resultName := xml.Name{Local: action + "Result"}
	decode := func(v any) error {
		if len(body) == 0 {
			return nil
		}
		if err := json.Unmarshal(body, v); err != nil {
			return fmt.Errorf("decoding %s response: %w", action, err)
		}
		return nil
	}
	switch action {
	case "CreateQueue", "GetQueueUrl":
		var out struct {
			QueueURL string `json:"QueueUrl"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		doc.Result = struct {
			XMLName  xml.Name
			QueueURL string `xml:"QueueUrl"`
		}{resultName, out.QueueURL}
	case "ListQueues":
		var out struct {
			QueueUrls []string `json:"QueueUrls"`
			NextToken string   `json:"NextToken"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		doc.Result = struct {
			XMLName   xml.Name
			QueueUrls []string `xml:"QueueUrl"`
			NextToken string   `xml:"NextToken,omitempty"`
		}{resultName, out.QueueUrls, out.NextToken}
	case "SendMessage":
		var out struct {
			MessageID        string `json:"MessageId"`
			MD5OfMessageBody string `json:"MD5OfMessageBody"`
			SequenceNumber   string `json:"SequenceNumber"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		attrs, _ := req["MessageAttributes"].(map[string]messageAttribute)
		doc.Result = struct {
			XMLName                xml.Name
			MD5OfMessageBody       string `xml:"MD5OfMessageBody"`
			MD5OfMessageAttributes string `xml:"MD5OfMessageAttributes,omitempty"`
			MessageID              string `xml:"MessageId"`
			SequenceNumber         string `xml:"SequenceNumber,omitempty"`
		}{resultName, out.MD5OfMessageBody, md5OfMessageAttributes(attrs), out.MessageID, out.SequenceNumber}
	case "SendMessageBatch":
		var out struct {
			Successful []struct {
				ID               string `json:"Id"`
				MessageID        string `json:"MessageId"`
				MD5OfMessageBody string `json:"MD5OfMessageBody"`
				SequenceNumber   string `json:"SequenceNumber"`
			} `json:"Successful"`
			Failed []jsonBatchError `json:"Failed"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		sent := map[string]map[string]messageAttribute{}
		entries, _ := req["Entries"].([]request)
		for _, e := range entries {
			id, _ := e["Id"].(string)
			sent[id], _ = e["MessageAttributes"].(map[string]messageAttribute)
		}
		type entry struct {
			ID                     string `xml:"Id"`
			MessageID              string `xml:"MessageId"`
			MD5OfMessageBody       string `xml:"MD5OfMessageBody"`
			MD5OfMessageAttributes string `xml:"MD5OfMessageAttributes,omitempty"`
			SequenceNumber         string `xml:"SequenceNumber,omitempty"`
		}
		result := struct {
			XMLName xml.Name
			Entries []entry         `xml:"SendMessageBatchResultEntry"`
			Errors  []xmlBatchError `xml:"BatchResultErrorEntry"`
		}{XMLName: resultName, Errors: batchErrors(out.Failed)}
		for _, s := range out.Successful {
			result.Entries = append(result.Entries, entry{s.ID, s.MessageID, s.MD5OfMessageBody, md5OfMessageAttributes(sent[s.ID]), s.SequenceNumber})
		}
		doc.Result = result
	case "ReceiveMessage":
		var out struct {
			Messages []struct {
				MessageID         string                      `json:"MessageId"`
				ReceiptHandle     string                      `json:"ReceiptHandle"`
				MD5OfBody         string                      `json:"MD5OfBody"`
				Body              string                      `json:"Body"`
				Attributes        map[string]string           `json:"Attributes"`
				MessageAttributes map[string]messageAttribute `json:"MessageAttributes"`
			} `json:"Messages"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		systemNames := slices.Concat(asStrings(req["AttributeNames"]), asStrings(req["MessageSystemAttributeNames"]))
		attrNames := asStrings(req["MessageAttributeNames"])
		result := struct {
			XMLName  xml.Name
			Messages []xmlMessage `xml:"Message"`
		}{XMLName: resultName}
		for _, m := range out.Messages {
			x := xmlMessage{MessageID: m.MessageID, ReceiptHandle: m.ReceiptHandle, MD5OfBody: m.MD5OfBody, Body: m.Body}
			system := map[string]string{}
			for n, v := range m.Attributes {
				if wanted(systemNames, n, false) {
					system[n] = v
				}
			}
			x.Attributes = sortedAttributes(system)
			attrs := map[string]messageAttribute{}
			for n, a := range m.MessageAttributes {
				if wanted(attrNames, n, true) {
					attrs[n] = a
				}
			}
			x.MD5OfMessageAttributes = md5OfMessageAttributes(attrs)
			names := make([]string, 0, len(attrs))
			for n := range attrs {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				a := attrs[n]
				v := xmlAttributeValue{StringValue: a.StringValue, DataType: a.DataType}
				if a.BinaryValue != nil {
					v.BinaryValue = encodeBase64(a.BinaryValue)
				}
				x.MessageAttributes = append(x.MessageAttributes, xmlMessageAttribute{Name: n, Value: v})
			}
			result.Messages = append(result.Messages, x)
		}
		doc.Result = result
	case "GetQueueAttributes":
		var out struct {
			Attributes map[string]string `json:"Attributes"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		doc.Result = struct {
			XMLName    xml.Name
			Attributes []xmlAttribute `xml:"Attribute"`
		}{resultName, sortedAttributes(out.Attributes)}
	case "ListQueueTags":
		var out struct {
			Tags map[string]string `json:"Tags"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		type tag struct {
			Key   string `xml:"Key"`
			Value string `xml:"Value"`
		}
		result := struct {
			XMLName xml.Name
			Tags    []tag `xml:"Tag"`
		}{XMLName: resultName}
		for _, a := range sortedAttributes(out.Tags) {
			result.Tags = append(result.Tags, tag{a.Name, a.Value})
		}
		doc.Result = result
	case "DeleteMessageBatch", "ChangeMessageVisibilityBatch":
		var out struct {
			Successful []idOnly         `json:"Successful"`
			Failed     []jsonBatchError `json:"Failed"`
		}
		if err := decode(&out); err != nil {
			return nil, err
		}
		// The entries are named for the action: DeleteMessageBatchResultEntry, …
		type entry struct {
			XMLName xml.Name
			ID      string `xml:"Id"`
		}
		result := struct {
			XMLName xml.Name
			Entries []entry
			Errors  []xmlBatchError `xml:"BatchResultErrorEntry"`
		}{XMLName: resultName, Errors: batchErrors(out.Failed)}
		for _, e := range out.Successful {
			result.Entries = append(result.Entries, entry{xml.Name{Local: action + "ResultEntry"}, e.ID})
		}
		doc.Result = result
	default: // DeleteMessage, ChangeMessageVisibility, SetQueueAttributes, PurgeQueue, DeleteQueue, TagQueue, UntagQueue
	}
	return doc, nil
}

func asStrings(v any) []string {
	s, _ := v.([]string)
	return s
}

// wanted reports whether attribute name was asked for: "All" asks for every one; message
// attribute names may also be ".*" or end in ".*" (a prefix).
func wanted(asked []string, name string, prefixes bool) bool {
	for _, a := range asked {
		switch {
		case a == "All" || a == name:
			return true
		case prefixes && a == ".*":
			return true
		case prefixes && strings.HasSuffix(a, ".*") && strings.HasPrefix(name, strings.TrimSuffix(a, "*")):
			return true
		}
	}
	return false
}
