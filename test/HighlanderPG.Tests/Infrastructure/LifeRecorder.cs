using System.Diagnostics;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>
/// Records every child's life across all nodes of a test, in one global order, and checks the at-most-once
/// invariant as it goes: a child starting while another child of the same singleton still runs is a violation.
/// </summary>
public sealed class LifeRecorder
{
    private readonly Lock _gate = new();
    private readonly List<LifeEvent> _events = [];
    private readonly Dictionary<string, string> _running = [];
    private readonly List<string> _violations = [];
    private readonly List<(Func<LifeEvent, bool> Match, TaskCompletionSource<LifeEvent> Done, int After)> _waiters = [];

    public IReadOnlyList<LifeEvent> Events
    {
        get
        {
            lock (_gate)
            {
                return [.. _events];
            }
        }
    }

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _events.Count;
            }
        }
    }

    public IReadOnlyList<string> Violations
    {
        get
        {
            lock (_gate)
            {
                return [.. _violations];
            }
        }
    }

    public void Record(string node, string singleton, LifeKind kind, string? detail = null)
    {
        List<TaskCompletionSource<LifeEvent>> done = [];
        LifeEvent entry;
        lock (_gate)
        {
            entry = new LifeEvent(_events.Count, node, singleton, kind, Stopwatch.GetTimestamp(), detail);
            if (kind == LifeKind.Started)
            {
                if (_running.TryGetValue(singleton, out var other))
                {
                    _violations.Add($"{singleton} started on {node} (event {entry.Seq}) while still running on {other}");
                }

                _running[singleton] = node;
            }
            else if (kind is LifeKind.Stopped or LifeKind.Killed)
            {
                if (_running.TryGetValue(singleton, out var runningOn) && runningOn == node)
                {
                    _running.Remove(singleton);
                }
            }

            _events.Add(entry);
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (entry.Seq >= _waiters[i].After && _waiters[i].Match(entry))
                {
                    done.Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }

        foreach (var d in done)
        {
            d.TrySetResult(entry);
        }
    }

    /// <summary>Waits for the first event from <paramref name="after"/> on that matches, failing after <paramref name="timeout"/>.</summary>
    public Task<LifeEvent> WaitAsync(Func<LifeEvent, bool> match, int after = 0, TimeSpan? timeout = null, string? what = null)
    {
        var tcs = new TaskCompletionSource<LifeEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            var existing = _events.Skip(after).FirstOrDefault(match);
            if (existing is not null)
            {
                return Task.FromResult(existing);
            }

            _waiters.Add((match, tcs, after));
        }

        var limit = timeout ?? TimeSpan.FromSeconds(60);
        return tcs.Task.WaitAsync(limit).ContinueWith(
            t => t.IsCompletedSuccessfully ? t.Result : throw new TimeoutException($"Timed out after {limit} waiting for {what ?? "an event"}. Events so far:\n{Describe()}"),
            TaskScheduler.Default);
    }

    public Task<LifeEvent> WaitStartedAsync(string singleton, int after = 0, string? node = null, string? notNode = null, TimeSpan? timeout = null) =>
        WaitAsync(e => e.Kind == LifeKind.Started && e.Singleton == singleton && (node is null || e.Node == node) && (notNode is null || e.Node != notNode), after, timeout, $"{singleton} to start{(node is null ? "" : " on " + node)}{(notNode is null ? "" : " not on " + notNode)}");

    public Task<LifeEvent> WaitStoppedAsync(string singleton, string node, int after = 0, TimeSpan? timeout = null) =>
        WaitAsync(e => e.Kind is LifeKind.Stopped or LifeKind.Killed && e.Singleton == singleton && e.Node == node, after, timeout, $"{singleton} to stop on {node}");

    public void AssertNoOverlap() => Assert.True(Violations.Count == 0, "At-most-once violated:\n" + string.Join("\n", Violations) + "\n" + Describe());

    public string Describe()
    {
        lock (_gate)
        {
            var start = _events.Count > 0 ? _events[0].Timestamp : 0;
            return string.Join("\n", _events.Select(e => $"  #{e.Seq} +{Stopwatch.GetElapsedTime(start, e.Timestamp).TotalMilliseconds:F0}ms {e.Node} {e.Singleton} {e.Kind} {e.Detail}"));
        }
    }
}

public enum LifeKind
{
    Started,
    Stopped,
    Killed,
    Escalated,
    Failed,
}

public sealed record LifeEvent(int Seq, string Node, string Singleton, LifeKind Kind, long Timestamp, string? Detail);
