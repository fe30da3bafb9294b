package localcloud

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// spotOptions are a spot launch's InstanceMarketOptions.
type spotOptions struct {
	maxPrice  float64 // 0: none given (capped at the on-demand price, as AWS does)
	requestID string  // the spot instance request EC2 reports for the instance
}

// parseMarketOptions reads InstanceMarketOptions: nil for an on-demand launch (no market
// type, or none given), else the spot options. Only one-time requests that terminate on
// interruption are accepted, which is what Sortie asks for.
func parseMarketOptions(form url.Values) (*spotOptions, *apiError) {
	const p = "InstanceMarketOptions."
	switch mt := form.Get(p + "MarketType"); mt {
	case "":
		for k := range form {
			if len(k) > len(p) && k[:len(p)] == p {
				return nil, missingParameter(p + "MarketType")
			}
		}
		return nil, nil
	case "spot":
	case "capacity-block":
		return nil, clientError("Unsupported", "The local cloud does not offer capacity blocks.")
	default:
		return nil, invalidParameter("Value (%s) for parameter InstanceMarketOptions.MarketType is invalid.", mt)
	}
	s := &spotOptions{requestID: newID("sir-")}
	if v := form.Get(p + "SpotOptions.MaxPrice"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0) || f > 1e6 {
			return nil, invalidParameter("Value (%s) for parameter SpotOptions.MaxPrice is invalid.", v)
		}
		s.maxPrice = f
	}
	if t := form.Get(p + "SpotOptions.SpotInstanceType"); t != "" && t != "one-time" {
		return nil, clientError("Unsupported", "The local cloud offers only one-time spot requests, got %q.", t)
	}
	if b := form.Get(p + "SpotOptions.InstanceInterruptionBehavior"); b != "" && b != "terminate" {
		return nil, clientError("Unsupported", "The local cloud's spot instances can only terminate on interruption, got %q.", b)
	}
	return s, nil
}

// spotLaunchableLocked refuses a spot launch the fault injection refuses, or whose max
// price is below the type's spot price.
func (c *Cloud) spotLaunchableLocked(instanceType string, s *spotOptions) *apiError {
	if code, ok := c.spotFaults[instanceType]; ok {
		switch code {
		case "SpotMaxPriceTooLow":
			return clientError(code, "Your Spot request price is lower than the minimum required Spot request fulfillment price.")
		case "MaxSpotInstanceCountExceeded":
			return clientError(code, "Max spot instance count exceeded")
		default:
			return &apiError{Status: http.StatusInternalServerError, Code: code,
				Message: fmt.Sprintf("There is no Spot capacity available that matches your request (%s).", instanceType)}
		}
	}
	if price, ok := c.spotPrices[instanceType]; ok && s.maxPrice > 0 && s.maxPrice < price {
		return clientError("SpotMaxPriceTooLow",
			"Your Spot request price of %g is lower than the minimum required Spot request fulfillment price of %g.", s.maxPrice, price)
	}
	return nil
}

// SpotCapacityCodes are the errors SetSpotFault can make spot launches fail with.
var SpotCapacityCodes = []string{"InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"}

// SetSpotFault makes every spot launch of instanceType fail with code (one of
// SpotCapacityCodes); an empty code removes the fault. On-demand launches are not affected.
func (c *Cloud) SetSpotFault(instanceType, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if code == "" {
		delete(c.spotFaults, instanceType)
		return
	}
	c.spotFaults[instanceType] = code
}

// SetSpotPrice sets instanceType's spot price: a spot launch whose MaxPrice is below it
// fails with SpotMaxPriceTooLow. price <= 0 removes it.
func (c *Cloud) SetSpotPrice(instanceType string, price float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if price <= 0 {
		delete(c.spotPrices, instanceType)
		return
	}
	c.spotPrices[instanceType] = price
}
