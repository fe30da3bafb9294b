package sqsquery

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"

	"github.com/google/uuid"
)

// namespace is the XML namespace of every SQS Query response.
const namespace = "http://queue.amazonaws.com/doc/" + Version + "/"

// maxResponseBytes bounds what is read back from the JSON endpoint (ten 256 KiB messages
// and their attributes fit many times over).
const maxResponseBytes = 32 << 20

// doer is the HTTP call made to the JSON endpoint.
type doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// Handler answers SQS Query requests by calling the JSON endpoint.
type Handler struct {
	endpoint string
	client   doer
	log      *slog.Logger
}

// New returns a Handler calling the SQS JSON protocol at endpoint through client.
func New(endpoint string, client doer, logger *slog.Logger) *Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{endpoint: endpoint, client: client, log: logger}
}

// queuePath is the path of a queue URL: /<account>/<name>.
var queuePath = regexp.MustCompile(`^/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$`)

// Serve answers one Query request whose form has been read already.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, form url.Values) {
	requestID := uuid.NewString()
	action := form.Get("Action")
	if action == "" {
		writeError(w, requestID, http.StatusBadRequest, "MissingAction", "The request must contain the parameter Action.")
		return
	}
	var queueURL string
	if queuePath.MatchString(r.URL.Path) {
		queueURL = "http://" + r.Host + r.URL.Path
	}
	req, perr := translate(action, form, queueURL)
	if perr != nil {
		h.log.Info("sqs query request refused", "action", action, "code", perr.code)
		writeError(w, requestID, http.StatusBadRequest, perr.code, perr.message)
		return
	}
	status, body, err := h.call(r.Context(), r.Header.Get("Authorization"), action, req)
	if err != nil {
		h.log.Warn("sqs query: calling the json endpoint", "action", action, "err", err)
		writeError(w, requestID, http.StatusInternalServerError, "InternalError", "The local cloud could not reach SQS.")
		return
	}
	if status >= 300 {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		if jerr := json.Unmarshal(body, &e); jerr != nil || e.Type == "" {
			writeError(w, requestID, status, "InternalError", strings.TrimSpace(string(body)))
			return
		}
		h.log.Info("sqs query request failed", "action", action, "code", e.Type)
		writeError(w, requestID, status, queryCode(e.Type), e.Message)
		return
	}
	doc, err := render(action, requestID, req, body)
	if err != nil {
		h.log.Warn("sqs query: rendering the response", "action", action, "err", err)
		writeError(w, requestID, http.StatusInternalServerError, "InternalError", "The local cloud could not read SQS's answer.")
		return
	}
	writeXML(w, http.StatusOK, doc)
}

func (h *Handler) call(ctx context.Context, authorization, action string, req request) (int, []byte, error) {
	payload, err := json.Marshal(req)
	if err != nil {
		return 0, nil, fmt.Errorf("encoding %s: %w", action, err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, h.endpoint+"/", bytes.NewReader(payload))
	if err != nil {
		return 0, nil, fmt.Errorf("building %s: %w", action, err)
	}
	hr.Header.Set("Content-Type", "application/x-amz-json-1.0")
	hr.Header.Set("X-Amz-Target", "AmazonSQS."+action)
	if authorization != "" {
		hr.Header.Set("Authorization", authorization)
	}
	resp, err := h.client.Do(hr)
	if err != nil {
		return 0, nil, fmt.Errorf("calling %s: %w", action, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return 0, nil, fmt.Errorf("reading %s response: %w", action, err)
	}
	return resp.StatusCode, body, nil
}

// queryCodes are the Query protocol's names of the errors the JSON protocol names anew.
var queryCodes = map[string]string{
	"QueueDoesNotExist":            "AWS.SimpleQueueService.NonExistentQueue",
	"QueueNameExists":              "QueueAlreadyExists",
	"PurgeQueueInProgress":         "AWS.SimpleQueueService.PurgeQueueInProgress",
	"QueueDeletedRecently":         "AWS.SimpleQueueService.QueueDeletedRecently",
	"TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
	"EmptyBatchRequest":            "AWS.SimpleQueueService.EmptyBatchRequest",
	"BatchEntryIdsNotDistinct":     "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
	"InvalidBatchEntryId":          "AWS.SimpleQueueService.InvalidBatchEntryId",
	"BatchRequestTooLong":          "AWS.SimpleQueueService.BatchRequestTooLong",
	"UnsupportedOperation":         "AWS.SimpleQueueService.UnsupportedOperation",
	"MessageNotInflight":           "AWS.SimpleQueueService.MessageNotInflight",
}

// queryCode turns a JSON error type (possibly "namespace#Code") into the Query code.
func queryCode(t string) string {
	if _, after, ok := strings.Cut(t, "#"); ok {
		t = after
	}
	if q, ok := queryCodes[t]; ok {
		return q
	}
	return t
}

// errorResponse is SQS's Query error document.
type errorResponse struct {
	XMLName   xml.Name `xml:"ErrorResponse"`
	Xmlns     string   `xml:"xmlns,attr"`
	Error     xmlError `xml:"Error"`
	RequestID string   `xml:"RequestId"`
}

type xmlError struct {
	Type    string   `xml:"Type"`
	Code    string   `xml:"Code"`
	Message string   `xml:"Message"`
	Detail  struct{} `xml:"Detail"`
}

func writeError(w http.ResponseWriter, requestID string, status int, code, message string) {
	kind := "Sender"
	if status >= 500 {
		kind = "Receiver"
	}
	writeXML(w, status, errorResponse{Xmlns: namespace, Error: xmlError{Type: kind, Code: code, Message: message}, RequestID: requestID})
}

func writeXML(w http.ResponseWriter, status int, v any) {
	body, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, "encoding response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64")
	}
	return b, nil
}

// md5OfMessageAttributes is the digest SQS reports for a message's attributes and clients
// check: for each attribute in name order, the name, the data type, a transport byte
// (1 string, 2 binary) and the value, each length-prefixed (4 bytes, big-endian).
func md5OfMessageAttributes(attrs map[string]messageAttribute) string {
	if len(attrs) == 0 {
		return ""
	}
	names := make([]string, 0, len(attrs))
	for n := range attrs {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	field := func(b []byte) {
		_ = binary.Write(&buf, binary.BigEndian, uint32(len(b)))
		buf.Write(b)
	}
	for _, n := range names {
		a := attrs[n]
		field([]byte(n))
		field([]byte(a.DataType))
		if strings.HasPrefix(a.DataType, "Binary") {
			buf.WriteByte(2)
			field(a.BinaryValue)
		} else {
			buf.WriteByte(1)
			field([]byte(a.StringValue))
		}
	}
	sum := md5.Sum(buf.Bytes())
	return hex.EncodeToString(sum[:])
}
