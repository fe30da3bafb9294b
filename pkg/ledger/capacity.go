package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// The stack's capacity item ("cap#stack") holds the instances and vCPUs reserved now, in
// total and per template ("tmpl_<name>"); each job's reservation is an item of its own
// ("res#<job id>"), so that reserving and releasing are idempotent.
const (
	capKey        = "cap#stack"
	attrInstances = "instances"
	attrVCPUs     = "vcpus"
	attrTemplate  = "template"
)

// Limits are the caps a reservation must stay within; zero means none.
type Limits struct {
	Instances, VCPUs, TemplateInstances int
}

// Reservation is what a fleet holds of the stack's capacity.
type Reservation struct {
	Instances, VCPUs int
	Template         string
}

// ErrNeverFits says a reservation is larger than a cap: waiting cannot help.
var ErrNeverFits = errors.New("larger than the stack's cap")

func resKey(jobID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: str("res#" + jobID)}
}

func tmplAttr(t string) string { return "tmpl_" + t }

// Reserve takes r for the job from the stack's capacity if it fits within lim, atomically
// (the job's reservation item and the stack's counters in one TransactWriteItems). It
// returns true when the job holds its reservation (taken now, or earlier), false when it
// does not fit now, and ErrNeverFits when it never can.
func (l *Ledger) Reserve(ctx context.Context, jobID string, r Reservation, lim Limits) (bool, error) {
	if (lim.Instances > 0 && r.Instances > lim.Instances) || (lim.VCPUs > 0 && r.VCPUs > lim.VCPUs) ||
		(lim.TemplateInstances > 0 && r.Instances > lim.TemplateInstances) {
		return false, fmt.Errorf("reserving %d instances (%d vCPUs) of template %s for job %s: %w (%d instances, %d vCPUs, %d of the template)",
			r.Instances, r.VCPUs, r.Template, jobID, ErrNeverFits, lim.Instances, lim.VCPUs, lim.TemplateInstances)
	}
	exp := num(l.cfg.Now().Add(l.cfg.TTL).Unix())
	res := resKey(jobID)
	res[AttrJobID] = str(jobID)
	res[attrInstances] = num(int64(r.Instances))
	res[attrVCPUs] = num(int64(r.VCPUs))
	res[attrTemplate] = str(r.Template)
	res[AttrExpires] = exp
	names := map[string]string{"#i": attrInstances, "#v": attrVCPUs, "#t": tmplAttr(r.Template)}
	values := map[string]types.AttributeValue{
		":i": num(int64(r.Instances)), ":v": num(int64(r.VCPUs)),
	}
	cond := ""
	and := func(c string) {
		if cond != "" {
			cond += " AND "
		}
		cond += c
	}
	if lim.Instances > 0 {
		values[":imax"] = num(int64(lim.Instances - r.Instances))
		and("(attribute_not_exists(#i) OR #i <= :imax)")
	}
	if lim.VCPUs > 0 {
		values[":vmax"] = num(int64(lim.VCPUs - r.VCPUs))
		and("(attribute_not_exists(#v) OR #v <= :vmax)")
	}
	if lim.TemplateInstances > 0 {
		values[":tmax"] = num(int64(lim.TemplateInstances - r.Instances))
		and("(attribute_not_exists(#t) OR #t <= :tmax)")
	}
	update := &types.Update{
		TableName:                 aws.String(l.cfg.Table),
		Key:                       map[string]types.AttributeValue{AttrKey: str(capKey)},
		UpdateExpression:          aws.String("ADD #i :i, #v :v, #t :i"),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	}
	if cond != "" {
		update.ConditionExpression = aws.String(cond)
	}
	_, err := l.cfg.API.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Put: &types.Put{
			TableName: aws.String(l.cfg.Table), Item: res,
			ConditionExpression:      aws.String("attribute_not_exists(#k)"),
			ExpressionAttributeNames: map[string]string{"#k": AttrKey},
		}},
		{Update: update},
	}})
	if err == nil {
		return true, nil
	}
	var tce *types.TransactionCanceledException
	if !errors.As(err, &tce) {
		return false, fmt.Errorf("reserving capacity for job %s: %w", jobID, err)
	}
	held, err := l.reservation(ctx, jobID)
	if err != nil {
		return false, err
	}
	return held != nil, nil // held: reserved by an earlier delivery; else no room now
}

// reservation reads the job's reservation item (nil when it has none).
func (l *Ledger) reservation(ctx context.Context, jobID string) (map[string]types.AttributeValue, error) {
	out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.cfg.Table), Key: resKey(jobID), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("reading the reservation of job %s: %w", jobID, err)
	}
	return out.Item, nil
}

// Release gives the job's reservation back to the stack's capacity, once: releasing a job
// without one (released before, or never reserved) does nothing.
func (l *Ledger) Release(ctx context.Context, jobID string) error {
	item, err := l.reservation(ctx, jobID)
	if err != nil || item == nil {
		return err
	}
	attrs := flatten(item)
	n, _ := strconv.ParseInt(attrs[attrInstances], 10, 64)
	v, _ := strconv.ParseInt(attrs[attrVCPUs], 10, 64)
	_, err = l.cfg.API.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Delete: &types.Delete{
			TableName: aws.String(l.cfg.Table), Key: resKey(jobID),
			ConditionExpression:      aws.String("attribute_exists(#k)"),
			ExpressionAttributeNames: map[string]string{"#k": AttrKey},
		}},
		{Update: &types.Update{
			TableName:                 aws.String(l.cfg.Table),
			Key:                       map[string]types.AttributeValue{AttrKey: str(capKey)},
			UpdateExpression:          aws.String("ADD #i :i, #v :v, #t :i"),
			ExpressionAttributeNames:  map[string]string{"#i": attrInstances, "#v": attrVCPUs, "#t": tmplAttr(attrs[attrTemplate])},
			ExpressionAttributeValues: map[string]types.AttributeValue{":i": num(-n), ":v": num(-v)},
		}},
	}})
	var tce *types.TransactionCanceledException
	if errors.As(err, &tce) {
		return nil // released meanwhile by another delivery
	}
	if err != nil {
		return fmt.Errorf("releasing the capacity of job %s: %w", jobID, err)
	}
	return nil
}

// InUse returns the instances and vCPUs reserved now in the stack, and per template.
func (l *Ledger) InUse(ctx context.Context) (instances, vcpus int, templates map[string]int, err error) {
	out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(l.cfg.Table), Key: map[string]types.AttributeValue{AttrKey: str(capKey)}, ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return 0, 0, nil, fmt.Errorf("reading the stack's capacity: %w", err)
	}
	templates = map[string]int{}
	for k, v := range flatten(out.Item) {
		n, _ := strconv.Atoi(v)
		switch {
		case k == attrInstances:
			instances = n
		case k == attrVCPUs:
			vcpus = n
		case len(k) > 5 && k[:5] == "tmpl_":
			templates[k[5:]] = n
		}
	}
	return instances, vcpus, templates, nil
}
