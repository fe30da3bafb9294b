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
)

// ensureTable creates the ledger's table (on-demand billing, hash key ledger.AttrKey) when
// it does not exist, and switches its TTL on (attribute ledger.AttrExpires) when it is off.
// deployments/terraform/ledger.tf declares the same table.
func (u *upper) ensureTable(ctx context.Context, name string) error {
	if u.c.DynamoDB == nil {
		return fmt.Errorf("table %s: no DynamoDB client", name)
	}
	_, err := u.c.DynamoDB.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
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

// deleteTable deletes the ledger's table: the history of the stack's jobs goes with it.
func (d *downer) deleteTable(ctx context.Context, name string) error {
	if d.c.DynamoDB == nil {
		return fmt.Errorf("table %s: no DynamoDB client", name)
	}
	_, err := d.c.DynamoDB.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(name)})
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
