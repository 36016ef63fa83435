namespace HighlanderPG.Leasing;

/// <summary>
/// Keeps the lease's two safety points on a dedicated thread, so that neither depends on the thread pool: the stop
/// point (the session's leases are lost and their children told to stop) and, for each lost lease whose child may
/// still run, its escalation point (the child is escalated, by default by ending the process).
/// </summary>
/// <remarks>
/// Timers and task continuations run on the thread pool. An application that starves its pool (sync-over-async,
/// blocking calls) would otherwise hold up the very timers that must end its children before the server frees their
/// locks: then the heartbeats stop, the lease runs out, and nothing would stop the child in time. This thread only
/// waits, compares timestamps and calls what is due; it never does I/O and never awaits.
/// </remarks>
internal sealed class LeaseGuard : IDisposable
{
    private readonly TimeProvider _time;
    private readonly Action _onStopPoint;
    private readonly object _gate = new();
    private readonly HashSet<Watch> _watches = []; // by reference: a node starting or stopping a thousand children adds or removes each in O(1)
    private readonly List<(IReadOnlyCollection<Lease> Leases, TaskCompletionSource Done)> _unwatchedWaiters = [];
    private long _stopAt = long.MaxValue;
    private bool _disposed;
    private bool _running;
    private readonly string _threadName;

    public LeaseGuard(TimeProvider time, string nodeId, Action onStopPoint)
    {
        _time = time;
        _onStopPoint = onStopPoint;
        _threadName = $"HighlanderPG lease guard ({nodeId})";
    }

    /// <summary>Sets (or moves) the point at which the session must give its leases up unless it hears from the server.</summary>
    public void SetStopPoint(long timestamp)
    {
        lock (_gate)
        {
            // Moved later (each acknowledged round trip does that): the guard, asleep until the earlier point, wakes then
            // and sleeps again until this one. Woken now only when the point comes sooner than it sleeps for.
            var sooner = timestamp < _stopAt;
            _stopAt = timestamp;
            EnsureRunning();
            if (sooner)
            {
                Monitor.Pulse(_gate);
            }
        }
    }

    /// <summary>No stop point: the session holds nothing that could expire (it was lost, or has no acknowledgement yet).</summary>
    public void ClearStopPoint()
    {
        lock (_gate)
        {
            _stopAt = long.MaxValue;
            Monitor.Pulse(_gate);
        }
    }

    /// <summary>Tells the guard that leases changed (one was lost, so its escalation point is now known).</summary>
    public void Poke()
    {
        lock (_gate)
        {
            Monitor.Pulse(_gate);
        }
    }

    /// <summary>
    /// Watches one child while it may run under <paramref name="lease"/>: once the lease is lost and its escalation point
    /// passed, if <paramref name="childRunning"/> still says so, <paramref name="escalate"/> is called on the guard's thread
    /// (unless the watch was escalated already, see <see cref="Watch.TryClaimEscalation"/>). Dispose the watch once the
    /// child is known to be gone.
    /// </summary>
    public Watch Start(Lease lease, Func<bool> childRunning, Action<Watch> escalate)
    {
        var watch = new Watch(this, lease, childRunning, escalate);
        lock (_gate)
        {
            _watches.Add(watch);
            EnsureRunning();

            // Only a lease already lost can make something due: the loss of one watched later pokes the guard (the session
            // loses its leases, then pokes). Waking the guard for every watch would have it look at every watch each
            // time: with a thousand children starting at once, a million looks, under the lock every start takes.
            if (lease.IsLost)
            {
                Monitor.Pulse(_gate);
            }
        }

        return watch;
    }

    /// <summary>
    /// Completes once no watch refers to any of <paramref name="leases"/> (at once if none does): every child that ran
    /// under them is known to be gone. The lock session keeps a retired connection, and so its locks, until then.
    /// </summary>
    public async Task WhenUnwatchedAsync(IReadOnlyCollection<Lease> leases, CancellationToken cancellationToken)
    {
        TaskCompletionSource done;
        lock (_gate)
        {
            if (!IsWatched(leases))
            {
                return;
            }

            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _unwatchedWaiters.Add((leases, done));
        }

        try
        {
            await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_gate)
            {
                _unwatchedWaiters.RemoveAll(w => w.Done == done);
            }
        }
    }

    /// <summary>Ends the guard once no watch is left (children still watched stay guarded after the session ended).</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            _stopAt = long.MaxValue;
            Monitor.Pulse(_gate);
        }
    }

    private void Remove(Watch watch)
    {
        lock (_gate)
        {
            _watches.Remove(watch);
            if (_disposed && _watches.Count == 0)
            {
                Monitor.Pulse(_gate); // the guard's thread ends; a watch gone never makes anything else due sooner
            }

            for (var i = _unwatchedWaiters.Count - 1; i >= 0; i--)
            {
                var (leases, done) = _unwatchedWaiters[i];
                if (!IsWatched(leases))
                {
                    _unwatchedWaiters.RemoveAt(i);
                    done.TrySetResult(); // continuations run asynchronously, outside this lock
                }
            }
        }
    }

    private bool IsWatched(IReadOnlyCollection<Lease> leases) => _watches.Any(w => leases.Contains(w.Lease));

    private void EnsureRunning()
    {
        if (_running || (_disposed && _watches.Count == 0))
        {
            return;
        }

        _running = true;
        var thread = new Thread(Run) { IsBackground = true, Name = _threadName };
        thread.Start();
    }

    private void Run()
    {
        List<Watch> due = [];
        while (true)
        {
            var stopPointDue = false;
            due.Clear();
            lock (_gate)
            {
                while (true)
                {
                    if (_disposed && _watches.Count == 0)
                    {
                        _running = false;
                        return;
                    }

                    _passes++;
                    var now = _time.GetTimestamp();
                    var next = _stopAt;
                    if (_stopAt <= now)
                    {
                        _stopAt = long.MaxValue;
                        next = long.MaxValue;
                        stopPointDue = true;
                    }

                    foreach (var watch in _watches)
                    {
                        if (watch.Checked || !watch.Lease.IsLost)
                        {
                            continue;
                        }

                        var at = watch.Lease.EscalateAtTimestamp;
                        if (at <= now)
                        {
                            watch.Checked = true;
                            due.Add(watch);
                        }
                        else
                        {
                            next = Math.Min(next, at);
                        }
                    }

                    if (stopPointDue || due.Count > 0)
                    {
                        break;
                    }

                    // Idle with nothing due: sleep until pulsed (a stop point set, a watch added, a lease lost).
                    Monitor.Wait(_gate, next == long.MaxValue ? Timeout.InfiniteTimeSpan : Clamp(_time.GetElapsedTime(now, next)));
                }
            }

            if (stopPointDue)
            {
                Call(_onStopPoint);
            }

            foreach (var watch in due)
            {
                if (watch.IsChildRunning())
                {
                    Call(() => watch.Escalate(watch));
                }
            }
        }
    }

    private int _passes;

    /// <summary>How many times the guard's thread has looked at its watches (for tests: a start or stop of a child does not make it look).</summary>
    internal int Passes
    {
        get
        {
            lock (_gate)
            {
                return _passes;
            }
        }
    }

    private static TimeSpan Clamp(TimeSpan wait) =>
        wait <= TimeSpan.Zero ? TimeSpan.Zero : wait > TimeSpan.FromHours(1) ? TimeSpan.FromHours(1) : wait + TimeSpan.FromTicks(TimeSpan.TicksPerMillisecond - 1);

    private static void Call(Action action)
    {
        try
        {
            action();
        }
        catch (Exception)
        {
            // The guard must go on watching the others; the callers log their own failures.
        }
    }

    /// <summary>One child watched under one lease.</summary>
    internal sealed class Watch : IDisposable
    {
        private readonly LeaseGuard _guard;
        private readonly Func<bool> _childRunning;
        private int _escalated;

        internal Watch(LeaseGuard guard, Lease lease, Func<bool> childRunning, Action<Watch> escalate)
        {
            _guard = guard;
            Lease = lease;
            _childRunning = childRunning;
            Escalate = escalate;
        }

        public Lease Lease { get; }

        internal Action<Watch> Escalate { get; }

        /// <summary>Whether the guard has looked at this watch at its escalation point (guarded by the guard's lock).</summary>
        internal bool Checked { get; set; }

        /// <summary>Claims the escalation of this child: true exactly once, for whoever (runner or guard) comes first.</summary>
        public bool TryClaimEscalation() => Interlocked.Exchange(ref _escalated, 1) == 0;

        internal bool IsChildRunning()
        {
            try
            {
                return _childRunning();
            }
            catch (Exception)
            {
                return true; // cannot tell: assume the worst
            }
        }

        public void Dispose() => _guard.Remove(this);
    }
}
