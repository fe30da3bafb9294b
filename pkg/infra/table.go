package infra

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// ensureTable creates the ledger's table (on-demand billing, hash key ledger.AttrKey) when
// it does not exist, and switches its TTL on (attribute ledger.AttrExpires) when it is off.
// deployments/terraform/ledger.tf declares the same table.
//
// Like the topics and queues, the table carries tags.Stack = stack: set in CreateTable,
// adopted when it is missing, and an error when another stack's.
func (u *upper) ensureTable(ctx context.Context, name, stack string) error {
	if u.c.DynamoDB == nil {
		return fmt.Errorf("table %s: no DynamoDB client", name)
	}
	desc, err := u.c.DynamoDB.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
	created := false
	switch {
	case awsx.IsNotFound(err):
		_, err := u.c.DynamoDB.CreateTable(ctx, &dynamodb.CreateTableInput{
			TableName:   aws.String(name),
			BillingMode: ddbtypes.BillingModePayPerRequest,
			AttributeDefinitions: []ddbtypes.AttributeDefinition{
				{AttributeName: aws.String(ledger.AttrKey), AttributeType: ddbtypes.ScalarAttributeTypeS},
			},
			KeySchema: []ddbtypes.KeySchemaElement{
				{AttributeName: aws.String(ledger.AttrKey), KeyType: ddbtypes.KeyTypeHash},
			},
			Tags: []ddbtypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String(stack)}},
		})
		if err != nil && awsx.ErrorCode(err) != "ResourceInUseException" {
			return fmt.Errorf("creating table %s: %w", name, err)
		}
		if err == nil {
			created = true
			u.report.add(Created, KindTable, name, "")
		} else {
			u.report.add(Exists, KindTable, name, "")
		}
		if err := dynamodb.NewTableExistsWaiter(u.c.DynamoDB).Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)}, tableWait); err != nil {
			return fmt.Errorf("waiting for table %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("describing table %s: %w", name, err)
	default:
		u.report.add(Exists, KindTable, name, "")
		arn := aws.ToString(desc.Table.TableArn)
		t := stackTagger{c: u.c, stack: stack}
		if err := t.claim(&u.report, KindTable, name, false, func() (owner, error) { return tableOwner(ctx, u.c.DynamoDB, arn) }, func() error {
			_, err := u.c.DynamoDB.TagResource(ctx, &dynamodb.TagResourceInput{
				ResourceArn: aws.String(arn), Tags: []ddbtypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String(stack)}},
			})
			return err
		}); err != nil {
			return err
		}
	}

	ttl, err := u.c.DynamoDB.DescribeTimeToLive(ctx, &dynamodb.DescribeTimeToLiveInput{TableName: aws.String(name)})
	if err != nil {
		return fmt.Errorf("describing the TTL of table %s: %w", name, err)
	}
	if d := ttl.TimeToLiveDescription; d != nil && aws.ToString(d.AttributeName) == ledger.AttrExpires &&
		(d.TimeToLiveStatus == ddbtypes.TimeToLiveStatusEnabled || d.TimeToLiveStatus == ddbtypes.TimeToLiveStatusEnabling) {
		u.report.add(Exists, KindTableTTL, name, "")
		return nil
	}
	if _, err := u.c.DynamoDB.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{
		TableName: aws.String(name),
		TimeToLiveSpecification: &ddbtypes.TimeToLiveSpecification{
			AttributeName: aws.String(ledger.AttrExpires), Enabled: aws.Bool(true),
		},
	}); err != nil {
		return fmt.Errorf("switching on the TTL of table %s: %w", name, err)
	}
	if created {
		u.report.add(Created, KindTableTTL, name, "")
	} else {
		u.report.add(Updated, KindTableTTL, name, "TTL was off; on "+ledger.AttrExpires)
	}
	return nil
}

// tableWait is how long Up waits for a new table to become active.
const tableWait = 2 * time.Minute

// tableOwner reads a table's sortie:stack tag.
func tableOwner(ctx context.Context, api DynamoDBAPI, arn string) (owner, error) {
	out, err := api.ListTagsOfResource(ctx, &dynamodb.ListTagsOfResourceInput{ResourceArn: aws.String(arn)})
	if err != nil {
		return owner{}, fmt.Errorf("reading the tags of table %s: %w", arn, err)
	}
	for _, tg := range out.Tags {
		if aws.ToString(tg.Key) == tags.Stack {
			return owner{stack: aws.ToString(tg.Value), tagged: true}, nil
		}
	}
	return owner{}, nil
}

// deleteTable deletes the ledger's table when it carries this stack's tag: the history of
// the stack's jobs goes with it.
func (d *downer) deleteTable(ctx context.Context, name, stack string) error {
	if d.c.DynamoDB == nil {
		return fmt.Errorf("table %s: no DynamoDB client", name)
	}
	desc, err := d.c.DynamoDB.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
	if awsx.IsNotFound(err) {
		d.report.add(Absent, KindTable, name, "")
		return nil
	}
	if err != nil {
		return fmt.Errorf("describing table %s: %w", name, err)
	}
	arn := aws.ToString(desc.Table.TableArn)
	ours, err := stackTagger{c: d.c, stack: stack}.ours(&d.report, KindTable, name, func() (owner, error) { return tableOwner(ctx, d.c.DynamoDB, arn) })
	if err != nil || !ours {
		return err
	}
	_, err = d.c.DynamoDB.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(name)})
	switch {
	case awsx.IsNotFound(err):
		d.report.add(Absent, KindTable, name, "")
	case err != nil:
		return fmt.Errorf("deleting table %s: %w", name, err)
	default:
		d.report.add(Deleted, KindTable, name, "")
	}
	return nil
}
