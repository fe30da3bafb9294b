package localcloud

// throttleState decides which EC2 requests fail with RequestLimitExceeded.
type throttleState struct {
	every int // every Nth request fails; 0 disables
	next  int // the next N requests fail
	count int
}

// hit counts a request and reports whether it is throttled.
func (t *throttleState) hit() bool {
	t.count++
	if t.next > 0 {
		t.next--
		return true
	}
	return t.every > 0 && t.count%t.every == 0
}

// SetThrottle makes every Nth EC2 request fail with RequestLimitExceeded (HTTP 503, as
// AWS does); every <= 0 turns it off. The count starts again from zero.
func (c *Cloud) SetThrottle(every int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.throttle.every = max(every, 0)
	c.throttle.count = 0
}

// ThrottleNext makes the next n EC2 requests fail with RequestLimitExceeded, whatever
// SetThrottle says.
func (c *Cloud) ThrottleNext(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.throttle.next = max(n, 0)
}

// SetCapacity caps the instances of instanceType that are not terminated at n; n < 0
// removes the cap.
func (c *Cloud) SetCapacity(instanceType string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 0 {
		delete(c.capacity, instanceType)
		return
	}
	c.capacity[instanceType] = n
}

// SetCapacityFault makes every launch of instanceType fail with
// InsufficientInstanceCapacity while failing is true; false removes the cap.
func (c *Cloud) SetCapacityFault(instanceType string, failing bool) {
	if failing {
		c.SetCapacity(instanceType, 0)
		return
	}
	c.SetCapacity(instanceType, -1)
}
