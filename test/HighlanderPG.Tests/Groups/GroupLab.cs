using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Tests.Groups;

/// <summary>One entry of a group test's journal: a member's start or stop on a node, under an epoch.</summary>
public sealed record GroupEntry(int Seq, string Node, string Member, string Kind, long? Epoch)
{
    public override string ToString() => $"#{Seq} {Node} {Kind} {Member} (epoch {Epoch})";
}

/// <summary>
/// The journal and the remote control of a group test's members, shared by every node of the test: members record their
/// starts and stops in order, and the test makes a member fail, complete, fail its start, or ignore its stop.
/// </summary>
public sealed class GroupLab
{
    private readonly Lock _gate = new();
    private readonly List<GroupEntry> _entries = [];
    private readonly Dictionary<string, TaskCompletionSource<Exception?>> _runs = [];
    private readonly Dictionary<string, int> _startFailures = [];
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Members that ignore their stop until <see cref="Release"/>.</summary>
    public HashSet<string> Stubborn { get; } = [];

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _entries.Count;
            }
        }
    }

    public IReadOnlyList<GroupEntry> Since(int mark)
    {
        lock (_gate)
        {
            return _entries.Skip(mark).ToList();
        }
    }

    public void Record(string node, string member, string kind, long? epoch)
    {
        TaskCompletionSource changed;
        lock (_gate)
        {
            _entries.Add(new GroupEntry(_entries.Count, node, member, kind, epoch));
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        changed.TrySetResult();
    }

    /// <summary>Waits until the entries from <paramref name="mark"/> on satisfy <paramref name="done"/>.</summary>
    public async Task<IReadOnlyList<GroupEntry>> WaitAsync(Func<IReadOnlyList<GroupEntry>, bool> done, int mark = 0, string what = "the expected entries")
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        while (true)
        {
            Task changed;
            IReadOnlyList<GroupEntry> entries;
            lock (_gate)
            {
                entries = _entries.Skip(mark).ToList();
                changed = _changed.Task;
            }

            if (done(entries))
            {
                return entries;
            }

            try
            {
                await changed.WaitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"Waited in vain for {what}; the journal from #{mark}:\n" + string.Join("\n", entries));
            }
        }
    }

    /// <summary>Waits until <paramref name="count"/> entries of <paramref name="kind"/> are recorded from <paramref name="mark"/> on.</summary>
    public Task<IReadOnlyList<GroupEntry>> WaitForAsync(string kind, int count, int mark = 0) =>
        WaitAsync(e => e.Count(x => x.Kind == kind) >= count, mark, $"{count} '{kind}' entries");

    public string Describe()
    {
        lock (_gate)
        {
            return string.Join("\n", _entries);
        }
    }

    /// <summary>Makes <paramref name="member"/>'s current run throw.</summary>
    public void Fail(string member) => Run(member).TrySetResult(new InvalidOperationException($"member {member} failure injected by the test"));

    /// <summary>Makes <paramref name="member"/>'s current run return normally.</summary>
    public void Complete(string member) => Run(member).TrySetResult(null);

    /// <summary>Makes the next <paramref name="times"/> starts of <paramref name="member"/> throw.</summary>
    public void FailStarts(string member, int times)
    {
        lock (_gate)
        {
            _startFailures[member] = times;
        }
    }

    /// <summary>Ends the stubborn members (what ending their process would do).</summary>
    public void Release() => _released.TrySetResult();

    internal Task Released => _released.Task;

    internal bool TakeStartFailure(string member)
    {
        lock (_gate)
        {
            if (_startFailures.TryGetValue(member, out var left) && left > 0)
            {
                _startFailures[member] = left - 1;
                return true;
            }

            return false;
        }
    }

    internal TaskCompletionSource<Exception?> NewRun(string member)
    {
        lock (_gate)
        {
            var run = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
            _runs[member] = run;
            return run;
        }
    }

    private TaskCompletionSource<Exception?> Run(string member)
    {
        lock (_gate)
        {
            return _runs[member];
        }
    }
}

public sealed class A;

public sealed class B;

public sealed class C;

/// <summary>
/// A group member named after <typeparamref name="TTag"/> (A -> "a"). It records its start in <c>StartAsync</c> (so that
/// the recorded order is the order the group started it in) and its stop when its execution ends.
/// </summary>
public sealed class Probe<TTag>(GroupLab lab, ILeadership leadership) : BackgroundService
{
    public static string Name { get; } = typeof(TTag).Name.ToLowerInvariant();

    private TaskCompletionSource<Exception?>? _run;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        lab.Record(leadership.NodeId, Name, "start", leadership.FencingEpoch);
        if (lab.TakeStartFailure(Name))
        {
            throw new InvalidOperationException($"member {Name} start failure injected by the test");
        }

        // The run exists once the member counts as running: since .NET 10 BackgroundService.StartAsync only queues
        // ExecuteAsync, so a run created there could come after the test saw the member running and failed it (a CI run
        // found no run of 'a' to fail).
        _run = lab.NewRun(Name);
        await base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var run = _run!;
        try
        {
            using var cancelled = stoppingToken.Register(() => run.TrySetResult(null));
            var outcome = await run.Task;
            if (lab.Stubborn.Contains(Name) && stoppingToken.IsCancellationRequested)
            {
                await lab.Released;
            }

            if (outcome is not null)
            {
                throw outcome;
            }
        }
        finally
        {
            // Recorded when its execution really ends: a member told to stop too early (say, together with its siblings)
            // would show up out of order here.
            lab.Record(leadership.NodeId, Name, "stop", leadership.FencingEpoch);
        }
    }
}

/// <summary>A plain hosted service member (no execution of its own): it runs from its start until its stop.</summary>
public sealed class PlainMember(GroupLab lab, ILeadership leadership) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lab.Record(leadership.NodeId, "plain", "start", leadership.FencingEpoch);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        lab.Record(leadership.NodeId, "plain", "stop", leadership.FencingEpoch);
        return Task.CompletedTask;
    }
}
