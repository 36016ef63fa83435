using System.Globalization;

namespace HighlanderPG.FaultRun;

/// <summary>One run of one singleton's child: from its start to its stop (or its process's end).</summary>
internal sealed class Life(string singleton, string host, string node, int pid, long epoch, long start, bool flockTaken)
{
    public string Singleton { get; } = singleton;
    public string Host { get; } = host;
    public string Node { get; } = node;
    public int Pid { get; } = pid;
    public long Epoch { get; } = epoch;
    public long Start { get; } = start;
    public bool FlockTaken { get; } = flockTaken;
    public long LastTick { get; set; } = start;

    /// <summary>Every tick, when the book keeps them (the checker: to find when a round settled after its live wait).</summary>
    public List<long>? Ticks { get; set; }

    /// <summary>Whether the child held the singleton's kernel lock (flock), which only its stop or its process's death frees.</summary>
    public bool HeldFlock { get; set; } = !flockTaken;
    public long? End { get; set; }

    /// <summary>How the end is known: "stop" (recorded), "kill" (SIGKILL sent), "exit" (process end observed), "gone" (found dead).</summary>
    public string EndKind { get; set; } = "";
}

/// <summary>
/// The lives of every singleton, rebuilt from the history; fed incrementally (live recovery detection) or all at once
/// (the checker). A life without a stop ends at the SIGKILL sent to its process after its last tick, else when its
/// process was seen to end.
/// </summary>
internal sealed class LifeBook
{
    private readonly Lock _gate = new();
    private readonly Dictionary<(int Pid, string Singleton), Life> _open = [];
    private readonly Dictionary<int, long> _killedAt = [];
    private readonly Dictionary<string, int> _openTx = new(StringComparer.Ordinal);

    public List<Life> All { get; } = [];

    /// <summary>Keep every life's ticks (<see cref="Life.Ticks"/>), so that <see cref="RecoveredAt"/> can be asked afterwards.</summary>
    public bool KeepTicks { get; init; }

    public Dictionary<string, (long Mono, long WallMs)> LastWall { get; } = new(StringComparer.Ordinal);

    public List<(long Mono, string Host, long WallMs)> WallSamples { get; } = [];

    public void Feed(HistoryEvent e)
    {
        lock (_gate)
        {
            FeedLocked(e);
        }
    }

    private void FeedLocked(HistoryEvent e)
    {
        switch (e.Kind)
        {
            case "start":
                if (_open.Remove((e.Pid, e.Singleton), out var previous))
                {
                    Close(previous, previous.LastTick, "restart");
                }

                var life = new Life(e.Singleton, e.Host, e.Node, e.Pid, e.Epoch, e.Mono, e.Detail == "flock-taken") { Ticks = KeepTicks ? [] : null };
                _open[(e.Pid, e.Singleton)] = life;
                All.Add(life);
                break;
            case "tick":
                if (_open.TryGetValue((e.Pid, e.Singleton), out var ticking))
                {
                    ticking.LastTick = Math.Max(ticking.LastTick, e.Mono);
                    ticking.Ticks?.Add(e.Mono);
                }

                Wall(e);
                break;
            case "alive":
                Wall(e);
                break;
            case "flock":
                if (_open.TryGetValue((e.Pid, e.Singleton), out var locking))
                {
                    locking.HeldFlock = true;
                }

                break;
            case "stop":
                if (_open.Remove((e.Pid, e.Singleton), out var stopped))
                {
                    Close(stopped, e.Mono, "stop");
                }

                break;
            case "intx":
                _openTx[e.Host] = _openTx.GetValueOrDefault(e.Host) + 1;
                break;
            case "outtx":
                _openTx[e.Host] = Math.Max(0, _openTx.GetValueOrDefault(e.Host) - 1);
                break;
            case "kill":
                foreach (var pid in Pids(e.Detail))
                {
                    _killedAt[pid] = e.Mono;
                }

                break;
            case "proc-exit":
            case "gone":
                foreach (var pid in Pids(e.Detail))
                {
                    ProcessEndedLocked(pid, e.Mono, e.Kind == "gone" ? "gone" : "exit");
                }

                break;
        }
    }

    private void Wall(HistoryEvent e)
    {
        var detail = e.Kind == "tick" ? e.Detail : e.Detail;
        if (long.TryParse(detail, NumberStyles.Integer, CultureInfo.InvariantCulture, out var wall))
        {
            LastWall[e.Host] = (e.Mono, wall);
            if (e.Kind == "alive")
            {
                WallSamples.Add((e.Mono, e.Host, wall));
            }
        }
    }

    private static IEnumerable<int> Pids(string detail)
    {
        foreach (var part in detail.Split(';'))
        {
            if (part.StartsWith("pid=", StringComparison.Ordinal))
            {
                foreach (var p in part[4..].Split(','))
                {
                    if (int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                    {
                        yield return pid;
                    }
                }
            }
        }
    }

    /// <summary>Every life of <paramref name="pid"/> still open ends: at the SIGKILL sent to it after its last tick, else now.</summary>
    public void ProcessEnded(int pid, long observedAt, string how)
    {
        lock (_gate)
        {
            ProcessEndedLocked(pid, observedAt, how);
        }
    }

    private void ProcessEndedLocked(int pid, long observedAt, string how)
    {
        foreach (var key in _open.Keys.Where(k => k.Pid == pid).ToList())
        {
            var life = _open[key];
            _open.Remove(key);
            if (_killedAt.TryGetValue(pid, out var killed) && killed >= life.LastTick && killed <= observedAt)
            {
                Close(life, killed, "kill");
            }
            else
            {
                Close(life, observedAt, how);
            }
        }
    }

    private static void Close(Life life, long end, string how)
    {
        life.End = Math.Max(end, life.Start);
        life.EndKind = how;
    }

    public List<Life> Open
    {
        get
        {
            lock (_gate)
            {
                return [.. _open.Values];
            }
        }
    }

    /// <summary>
    /// The singletons whose child ran at <paramref name="at"/> on <paramref name="host"/> (or, given, on that one node):
    /// what a fault there at that moment took away.
    /// </summary>
    public List<string> LedAt(long at, string host, string? node)
    {
        lock (_gate)
        {
            return [.. All.Where(l => l.Start < at && (l.End is not { } end || end > at) && (node is null ? l.Host == host : l.Node == node)).Select(l => l.Singleton).Distinct()];
        }
    }

    public List<int> OpenPids
    {
        get
        {
            lock (_gate)
            {
                return [.. _open.Keys.Select(k => k.Pid).Distinct()];
            }
        }
    }

    public bool HasOpenTransaction(string host)
    {
        lock (_gate)
        {
            return _openTx.GetValueOrDefault(host) > 0;
        }
    }

    public void ClearTransactions(string host)
    {
        lock (_gate)
        {
            _openTx[host] = 0;
        }
    }

    /// <summary>Exactly one live, ticking life per singleton, and no other open life: the cluster has recovered.</summary>
    public bool Recovered(IReadOnlyList<string> singletons, long now, out string why)
    {
        lock (_gate)
        {
            return RecoveredLocked(singletons, now, out why);
        }
    }

    /// <summary>
    /// Afterwards, over the whole history (ticks kept): the first instant of <paramref name="from"/> + k × 50 ms before
    /// <paramref name="until"/> at which <see cref="Recovered"/> would have said yes (the coordinator's own 50 ms poll).
    /// </summary>
    public long? RecoveredAt(IReadOnlyList<string> singletons, long from, long until)
    {
        lock (_gate)
        {
            var fresh = Mono.FromSeconds(0.6);
            var bySingleton = All.GroupBy(l => l.Singleton).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
            for (var t = from; t < until; t += Mono.FromSeconds(0.05))
            {
                var ok = true;
                foreach (var s in singletons)
                {
                    var open = (bySingleton.GetValueOrDefault(s) ?? []).Where(l => l.Start <= t && (l.End is not { } end || end > t)).Take(2).ToList();
                    if (open.Count != 1 || t - LastTickAt(open[0], t) > fresh)
                    {
                        ok = false;
                        break;
                    }
                }

                if (ok)
                {
                    return t;
                }
            }

            return null;
        }
    }

    private static long LastTickAt(Life life, long t)
    {
        var ticks = life.Ticks ?? [];
        var i = ticks.BinarySearch(t);
        i = i >= 0 ? i : ~i - 1;
        return i >= 0 ? Math.Max(life.Start, ticks[i]) : life.Start;
    }

    private bool RecoveredLocked(IReadOnlyList<string> singletons, long now, out string why)
    {
        var fresh = Mono.FromSeconds(0.6);
        var bySingleton = _open.Values.GroupBy(l => l.Singleton).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        var missing = new List<string>();
        var duplicated = new List<string>();
        foreach (var s in singletons)
        {
            var lives = bySingleton.GetValueOrDefault(s) ?? [];
            if (lives.Count > 1)
            {
                duplicated.Add(s + "@" + string.Join('+', lives.Select(l => l.Node)));
            }
            else if (lives.Count == 0 || now - lives[0].LastTick > fresh)
            {
                missing.Add(s);
            }
        }

        why = (missing.Count > 0 ? $"not running: {string.Join(',', missing.Take(8))}{(missing.Count > 8 ? $" (+{missing.Count - 8})" : "")} " : "")
            + (duplicated.Count > 0 ? $"more than one: {string.Join(',', duplicated.Take(8))}" : "");
        return missing.Count == 0 && duplicated.Count == 0;
    }
}
