using System.Threading.Channels;
using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Supervision;

/// <summary>
/// A lock session without PostgreSQL, for driving a runner: the test grants leases, loses them, and raises connection
/// events; what the runner asks of it is journaled. Its lease guard is the real one, on the fake clock.
/// </summary>
internal sealed class FakeLockSession(FakeTimeProvider time, Journal journal) : ILockSession, IDisposable
{
    private readonly Channel<(long Key, TaskCompletionSource<Lease> Grant)> _acquires = Channel.CreateUnbounded<(long, TaskCompletionSource<Lease>)>();
    private int _generation;

    private readonly SessionObservers _observers = new();

    public IDisposable Observe(long key, ISessionObserver observer) => _observers.Add(key, observer);

    public bool IsConnected { get; set; } = true;

    public int BackendPid { get; set; } = 4242;

    public LeaseGuard Guard { get; } = new(time, "fake", () => { });

    public long ServerMayFreeTimestamp { get; set; } = long.MinValue;

    public int Releases;

    public Task<Lease> AcquireAsync(long key, string name, CancellationToken cancellationToken)
    {
        var grant = new TaskCompletionSource<Lease>(TaskCreationOptions.RunContinuationsAsynchronously);
        cancellationToken.Register(() => grant.TrySetCanceled(cancellationToken));
        _acquires.Writer.TryWrite((key, grant));
        return grant.Task;
    }

    public Task ReleaseAsync(Lease lease)
    {
        Interlocked.Increment(ref Releases);
        journal.Add("release");
        return Task.CompletedTask;
    }

    public LeaderInfo? GetHolder(long key) => null;

    /// <summary>The hold-offs the runner asked for (after a step-down), in order.</summary>
    public List<TimeSpan> HoldOffs { get; } = [];

    public void HoldOff(long key, TimeSpan duration)
    {
        lock (HoldOffs)
        {
            HoldOffs.Add(duration);
        }
    }

    /// <summary>Waits for the runner's next AcquireAsync and grants it a fresh lease.</summary>
    public async Task<Lease> GrantNextAsync()
    {
        var (key, grant) = await _acquires.Reader.ReadAsync().AsTask().WaitAsync(Journal.Limit);
        var lease = new Lease(key, Interlocked.Increment(ref _generation), time.GetUtcNow());
        grant.SetResult(lease);
        return lease;
    }

    /// <summary>Waits until the runner contends again (its next AcquireAsync), without granting it.</summary>
    public async Task WaitForAcquireAsync() => await _acquires.Reader.WaitToReadAsync().AsTask().WaitAsync(Journal.Limit);

    public void RaiseConnectionChanged(string? reason) => _observers.ConnectionChanged(reason);

    public void RaiseHolderChanged(long key, LeaderInfo? holder) => _observers.HolderChanged(key, holder);

    public void Dispose() => Guard.Dispose();
}

/// <summary>An ordered record of what happened, awaitable by entry.</summary>
internal sealed class Journal
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    private readonly List<string> _entries = [];
    private readonly List<(string Entry, TaskCompletionSource Seen)> _waiters = [];

    public void Add(string entry)
    {
        List<TaskCompletionSource> seen;
        lock (_entries)
        {
            _entries.Add(entry);
            seen = _waiters.Where(w => w.Entry == entry).Select(w => w.Seen).ToList();
            _waiters.RemoveAll(w => w.Entry == entry);
        }

        foreach (var s in seen)
        {
            s.TrySetResult();
        }
    }

    public IReadOnlyList<string> Entries
    {
        get
        {
            lock (_entries)
            {
                return [.. _entries];
            }
        }
    }

    public Task WaitForAsync(string entry)
    {
        lock (_entries)
        {
            if (_entries.Contains(entry))
            {
                return Task.CompletedTask;
            }

            var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((entry, seen));
            return seen.Task.WaitAsync(Limit);
        }
    }

    public override string ToString() => string.Join(", ", Entries);
}
