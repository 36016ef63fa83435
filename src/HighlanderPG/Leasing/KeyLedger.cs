namespace HighlanderPG.Leasing;

/// <summary>
/// The lock session's bookkeeping, with no I/O: which keys runners want, which this session holds, who else holds the
/// keys it wants, which releases are queued or in flight, and which newly taken keys still wait for their fencing epoch.
/// Every member takes the ledger's lock; callers act (complete tasks, raise events) outside it.
/// </summary>
internal sealed partial class KeyLedger
{
    private readonly Lock _gate = new();
    private readonly Dictionary<long, Want> _wants = [];
    private readonly Dictionary<long, Lease> _held = [];
    private readonly Dictionary<long, LeaderInfo> _holders = [];
    private readonly HashSet<long> _staleHolders = []; // keys whose last seen holder may have changed (asked again at the next failed try)
    private readonly HashSet<int> _watched = []; // holder pids the follower waiter is watching right now
    private readonly List<(Lease Lease, TaskCompletionSource Done)> _releases = [];
    private readonly Dictionary<long, long> _unfenced = []; // key -> when to try its epoch bump (next)
    private readonly List<(Lease Lease, TaskCompletionSource Done)> _inflightReleases = [];
    private bool _wantsChanged;
    private bool _poke;
    private readonly HashSet<long> _announced = []; // wanted keys whose release another node announced since the last try
    private readonly HashSet<long> _neverFenced = []; // keys granted without an epoch bump even when fencing is on (a rehearsal's)
    private readonly Dictionary<long, int> _foundFree = []; // wanted keys the holder query found held by nobody, yet not taken since: how many times in a row
    private HashSet<long>? _gathering; // held keys whose release a node's stop gathers into one batch, not queued yet
    private long _gatherUntil; // when the gathering ends whatever is still missing
    private int _generation;
    private int _heartbeatsSinceFullTry;

    /// <summary>
    /// Every this many heartbeats, a follower tries every wanted key, also those whose holder the waiter watches: the
    /// backstop for an event the waiter or a notification could have missed. In between, a heartbeat tries only the keys
    /// nobody watches, so that its cost does not grow with the number of singletons.
    /// </summary>
    public const int HeartbeatsPerFullTry = 10;

    /// <summary>Registers that a runner wants <paramref name="key"/>; throws when it is already wanted or held.</summary>
    public Want AddWant(long key, string name)
    {
        var want = new Want(key, name);
        lock (_gate)
        {
            if (_held.TryGetValue(key, out var stale) && stale.IsLost)
            {
                // Lost at the stop point (by the lease guard) while the loop is still giving the session up: it is gone with that session.
                _held.Remove(key);
                _unfenced.Remove(key);
            }

            if (_wants.ContainsKey(key) || _held.ContainsKey(key))
            {
                throw new InvalidOperationException($"Key {key} is already wanted or held by this node.");
            }

            _wants[key] = want;
            _wantsChanged = true;
        }

        return want;
    }

    /// <summary>The runner gave up wanting (its token fired): forget the want, if it is still the current one.</summary>
    public void CancelWant(Want want)
    {
        lock (_gate)
        {
            if (_wants.TryGetValue(want.Key, out var current) && current == want)
            {
                _wants.Remove(want.Key);
                _foundFree.Remove(want.Key);
            }
        }
    }

    /// <summary>Queues the release of <paramref name="lease"/>; false when this session does not hold it (any more).</summary>
    public bool QueueRelease(Lease lease, TaskCompletionSource done) => QueueRelease(lease, done, out _);

    /// <summary>
    /// Queues the release of <paramref name="lease"/>; false when this session does not hold it (any more).
    /// <paramref name="gathered"/>: held for a gathering still missing others (<see cref="GatherReleases"/>), so the
    /// loop need not wake for it (it wakes for the last one, or when the gathering ends).
    /// </summary>
    public bool QueueRelease(Lease lease, TaskCompletionSource done, out bool gathered)
    {
        lock (_gate)
        {
            gathered = false;
            if (!_held.TryGetValue(lease.Key, out var held) || held != lease)
            {
                return false;
            }

            gathered = AddRelease(lease, done);
            return true;
        }
    }

    /// <summary>
    /// Queues a release (under the lock); true when it is held for a gathering still missing others
    /// (<see cref="GatherReleases"/>). Every queued release counts, also one whose runner gave up (a key granted as the
    /// node began stopping): none of them is waited for.
    /// </summary>
    private bool AddRelease(Lease lease, TaskCompletionSource done)
    {
        _releases.Add((lease, done));
        if (_gathering is null || !_gathering.Remove(lease.Key))
        {
            return false;
        }

        if (_gathering.Count == 0)
        {
            _gathering = null; // the last one: the batch goes now
            return false;
        }

        return true;
    }

    /// <summary>
    /// Many runners are about to release together (the node is stopping, or a drain steps them down): their releases are
    /// gathered into one batch, sent once every key of <paramref name="keys"/> (default: every key held now) is queued
    /// for release or at <paramref name="until"/> (a timestamp), whichever comes first. Each batch makes every follower
    /// try its keys, and a thousand singletons released as their children return, in dozens of batches, set every
    /// follower racing dozens of times on the same cores as the stop (docs/lease-protocol.md, "Releasing").
    /// A gathering under way takes the new keys in and keeps the sooner end.
    /// </summary>
    public void GatherReleases(long until, IReadOnlyCollection<long>? keys = null)
    {
        lock (_gate)
        {
            // Plain loops, no LINQ: this runs first thing in a node's stop (on a stop signal's thread under the CLI), and
            // LINQ over the release tuples would load and compile its generic iterators then (about 4 ms measured),
            // before any child is told to stop (docs/cli.md, "Hand-over: where the time goes").
            var gathering = _gathering ?? [];
            if (keys is null)
            {
                foreach (var (key, lease) in _held)
                {
                    if (!lease.IsLost)
                    {
                        gathering.Add(key);
                    }
                }
            }
            else
            {
                foreach (var key in keys)
                {
                    if (_held.TryGetValue(key, out var lease) && !lease.IsLost)
                    {
                        gathering.Add(key);
                    }
                }
            }

            // Queued or on their way already: not waited for.
            for (var i = 0; i < _releases.Count; i++)
            {
                gathering.Remove(_releases[i].Lease.Key);
            }

            for (var i = 0; i < _inflightReleases.Count; i++)
            {
                gathering.Remove(_inflightReleases[i].Lease.Key);
            }

            // Nothing to gather for one singleton: its release goes as soon as it is queued.
            _gatherUntil = _gathering is null ? until : Math.Min(_gatherUntil, until);
            _gathering = gathering.Count > 1 ? gathering : null;
        }
    }

    /// <summary>While a gathering lasts, when it ends; otherwise <see cref="long.MaxValue"/>.</summary>
    public long GatheringUntil
    {
        get
        {
            lock (_gate)
            {
                return _gathering is not null ? _gatherUntil : long.MaxValue;
            }
        }
    }

    /// <summary>Queues the release of a lease nobody waits for (its runner gave up, or could not take it).</summary>
    public void QueueOrphanRelease(Lease lease)
    {
        lock (_gate)
        {
            _ = AddRelease(lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        }
    }

    /// <summary>The holder of <paramref name="key"/> last seen (for a key wanted but not held).</summary>
    public LeaderInfo? GetHolder(long key)
    {
        lock (_gate)
        {
            return _holders.GetValueOrDefault(key);
        }
    }

    /// <summary>Keys wanted but not held, with the backend pid of their last seen holder.</summary>
    public List<(long Key, int? HolderPid)> GetWaitTargets()
    {
        lock (_gate)
        {
            return _wants.Keys.Where(k => !_held.ContainsKey(k)).Select(k => (k, _holders.TryGetValue(k, out var h) ? h.BackendPid : (int?)null)).ToList();
        }
    }

    /// <summary>
    /// What the follower waiter should watch: one wanted key per distinct holder (its lowest), the holder with the most
    /// wanted keys first (the waiter blocks on that one and polls the others). Holders whose keys may have changed hands
    /// are left out until they are asked again.
    /// </summary>
    public List<(int HolderPid, long Key)> WatchTargets()
    {
        // One pass over the wanted keys, no grouping or sorting of keys: the waiter asks after every change it hears of,
        // and a follower of a thousand singletons hears of many while a holder hands them over.
        lock (_gate)
        {
            var byHolder = new Dictionary<int, (int Count, long Lowest)>();
            foreach (var key in _wants.Keys)
            {
                if (_held.ContainsKey(key) || _staleHolders.Contains(key) || !_holders.TryGetValue(key, out var holder))
                {
                    continue;
                }

                byHolder[holder.BackendPid] = byHolder.TryGetValue(holder.BackendPid, out var seen)
                    ? (seen.Count + 1, Math.Min(seen.Lowest, key))
                    : (1, key);
            }

            var targets = new List<(int HolderPid, long Key, int Count)>(byHolder.Count);
            foreach (var (pid, (count, lowest)) in byHolder)
            {
                targets.Add((pid, lowest, count));
            }

            targets.Sort(static (a, b) => a.Count != b.Count ? b.Count.CompareTo(a.Count) : a.HolderPid.CompareTo(b.HolderPid));
            return targets.ConvertAll(static t => (t.HolderPid, t.Key));
        }
    }

    /// <summary>The waiter watches these holders now (their end wakes it at once), or none (<see langword="null"/>: it is not waiting).</summary>
    public void SetWatched(IEnumerable<int>? holderPids)
    {
        lock (_gate)
        {
            _watched.Clear();
            if (holderPids is not null)
            {
                _watched.UnionWith(holderPids);
            }
        }
    }

    /// <summary>Whether the waiter watches <paramref name="key"/>'s holder now (known, and not since seen gone).</summary>
    public bool Watches(long key)
    {
        lock (_gate)
        {
            return IsWatched(key);
        }
    }

    /// <summary>
    /// The waiter saw <paramref name="key"/> freed: its holder ended or released it. Every key seen held by that holder
    /// may have changed hands: they (only they: other holders' keys are watched on their own) are tried at the next
    /// turn, and their holders asked again. A key whose holder was not known makes every wanted key tried.
    /// </summary>
    public void HolderGone(long key)
    {
        lock (_gate)
        {
            if (_holders.TryGetValue(key, out var gone))
            {
                foreach (var (k, holder) in _holders)
                {
                    if (holder.BackendPid == gone.BackendPid)
                    {
                        _staleHolders.Add(k);
                        if (_wants.ContainsKey(k))
                        {
                            _announced.Add(k);
                        }
                    }
                }

                _watched.Remove(gone.BackendPid);
            }
            else
            {
                _poke = true;
            }

            _staleHolders.Add(key);
            if (_wants.ContainsKey(key))
            {
                _announced.Add(key);
            }

            _membersStale = true; // placement: a member may have gone with it (KeyLedger.Placement.cs)
        }
    }

    /// <summary>
    /// Whether a try that failed on <paramref name="failed"/> lost a race: one of them had a known holder who went
    /// (ended, or announced its release) since, so another node has just taken it and is starting its children.
    /// </summary>
    public bool LostRace(IEnumerable<long> failed)
    {
        lock (_gate)
        {
            return failed.Any(k => _holders.ContainsKey(k) && _staleHolders.Contains(k));
        }
    }

    /// <summary>
    /// After a try that failed on <paramref name="failed"/>, in one pass: whether one of them needs its holder asked
    /// (<see cref="NeedHolder(IEnumerable{long})"/>), the longest found-free streak among them
    /// (<see cref="FoundFreeStreak"/>), and whether the try lost a race (<see cref="LostRace"/>).
    /// </summary>
    public (bool NeedHolder, int FoundFreeStreak, bool LostRace) AfterFailedTry(ReadOnlySpan<long> failed)
    {
        lock (_gate)
        {
            var need = false;
            var lost = false;
            var streak = 0;
            foreach (var key in failed)
            {
                var known = _holders.ContainsKey(key);
                var stale = _staleHolders.Contains(key);
                need |= !known || stale;
                lost |= known && stale;
                if (_foundFree.TryGetValue(key, out var found) && found > streak)
                {
                    streak = found;
                }
            }

            return (need, streak, lost);
        }
    }

    /// <summary>Of <paramref name="failed"/> (keys this node could not take), those whose holder is not known (or may have changed).</summary>
    public long[] NeedHolder(IEnumerable<long> failed)
    {
        lock (_gate)
        {
            return [.. failed.Where(k => !_holders.ContainsKey(k) || _staleHolders.Contains(k))];
        }
    }

    /// <summary>Of the keys wanted and not held, those whose holder is not known (or may have changed).</summary>
    public long[] NeedHolder()
    {
        lock (_gate)
        {
            return [.. _wants.Keys.Where(k => !_held.ContainsKey(k) && (!_holders.ContainsKey(k) || _staleHolders.Contains(k)))];
        }
    }

    /// <summary>
    /// Of <paramref name="failed"/> (keys this node just failed to take), how many holder queries in a row found one of
    /// them held by nobody (the most of any; 0 when none was): the longer that goes on, the longer the session waits
    /// before it asks again (<see cref="LockSession.FreeRetryDelay"/>).
    /// </summary>
    public int FoundFreeStreak(IEnumerable<long> failed)
    {
        lock (_gate)
        {
            var streak = 0;
            foreach (var key in failed)
            {
                streak = Math.Max(streak, _foundFree.GetValueOrDefault(key));
            }

            return streak;
        }
    }

    /// <summary>Something may have freed a wanted lock: try at the next turn.</summary>
    public void Poke()
    {
        lock (_gate)
        {
            _poke = true;
        }
    }

    /// <summary>A release of <paramref name="key"/> was announced: try at the next turn if it is wanted.</summary>
    public void OnReleaseAnnounced(long key)
    {
        lock (_gate)
        {
            if (_wants.ContainsKey(key))
            {
                // Tried at the next turn (only the announced keys: the others' holders did not change); whoever takes
                // it next is asked after the try fails.
                _staleHolders.Add(key);
                _announced.Add(key);
            }
        }
    }

    public bool AnyWants
    {
        get
        {
            lock (_gate)
            {
                return _wants.Count > 0;
            }
        }
    }

    /// <summary>The current session generation (each new session is a new one).</summary>
    public int Generation
    {
        get
        {
            lock (_gate)
            {
                return _generation;
            }
        }
    }

    /// <summary>A new session is up: a new generation, and every wanted key is worth a try.</summary>
    public void NewGeneration()
    {
        lock (_gate)
        {
            _generation++;
            _wantsChanged = true;
        }
    }

    /// <summary>The leases this session holds (whether or not lost meanwhile).</summary>
    public List<Lease> HeldLeases()
    {
        lock (_gate)
        {
            return [.. _held.Values];
        }
    }

    /// <summary>
    /// What the loop should do next: the queued releases (moved in flight), or else the keys to try. When something may
    /// have changed (the waiter saw a lock freed, a runner started wanting, a new session), every wanted key; after a
    /// release announcement, the announced keys (a node handing over a thousand singletons announces them in a few
    /// batches, and each follower tries each batch's keys, not all thousand each time); at a heartbeat, also the keys
    /// whose holder nobody watches (not known, possibly changed, or not watched by the waiter), and every
    /// <see cref="HeartbeatsPerFullTry"/>th heartbeat every wanted key. Never a key already held: session locks are
    /// re-entrant.
    /// </summary>
    public (List<(Lease Lease, TaskCompletionSource Done)> Releases, long[] ToTry) TakeWork(bool heartbeatDue, bool lockDelayPassed, long now)
    {
        lock (_gate)
        {
            if (_gathering is not null)
            {
                if (now < _gatherUntil && _releases.Count > 0)
                {
                    return ([], []); // held for the rest of the gathering (GatherReleases); the node is stopping, nothing to try
                }

                if (now >= _gatherUntil)
                {
                    _gathering = null;
                }
            }

            List<(Lease Lease, TaskCompletionSource Done)> releases = [.. _releases];
            _releases.Clear();
            long[] toTry = [];
            if (releases.Count == 0 && lockDelayPassed && (heartbeatDue || _poke || _wantsChanged || _announced.Count > 0))
            {
                var full = _poke || _wantsChanged || (heartbeatDue && ++_heartbeatsSinceFullTry >= HeartbeatsPerFullTry);
                toTry = full ? Wanted(watchedToo: true) : heartbeatDue ? Wanted(watchedToo: false) : AnnouncedWanted();
                toTry = WithoutHeldOff(toTry);
                if (full)
                {
                    _heartbeatsSinceFullTry = 0;
                }

                _poke = false;
                _wantsChanged = false;
                _announced.Clear();
            }

            _inflightReleases.AddRange(releases);
            return (releases, toTry);
        }
    }

    /// <summary>Wanted keys not held (with <paramref name="watchedToo"/> false, only those nobody watches or announced); under the lock.</summary>
    private long[] Wanted(bool watchedToo)
    {
        var keys = new List<long>(_wants.Count);
        foreach (var key in _wants.Keys)
        {
            if (!_held.ContainsKey(key) && (watchedToo || !IsWatched(key) || _announced.Contains(key)))
            {
                keys.Add(key);
            }
        }

        return [.. keys];
    }

    /// <summary>Announced keys wanted and not held; under the lock.</summary>
    private long[] AnnouncedWanted()
    {
        var keys = new List<long>(_announced.Count);
        foreach (var key in _announced)
        {
            if (_wants.ContainsKey(key) && !_held.ContainsKey(key))
            {
                keys.Add(key);
            }
        }

        return [.. keys];
    }

    private bool IsWatched(long key) =>
        !_staleHolders.Contains(key) && _holders.TryGetValue(key, out var holder) && _watched.Contains(holder.BackendPid);

    /// <summary>The server unlocked these leases' keys: they are no longer held.</summary>
    public void Released(List<(Lease Lease, TaskCompletionSource Done)> releases)
    {
        lock (_gate)
        {
            foreach (var (lease, _) in releases)
            {
                if (_held.TryGetValue(lease.Key, out var held) && held == lease)
                {
                    _held.Remove(lease.Key);
                }

                _covered.Remove(lease);
            }

            _inflightReleases.Clear();
        }
    }

    /// <summary>
    /// The session took <paramref name="got"/>: they are held now. Without fencing each goes to its runner (returned);
    /// with fencing each waits for its epoch bump. A key nobody wants any more is released at once.
    /// </summary>
    public List<(Want Want, Lease Lease)> Taken(IEnumerable<long> got, bool fencing, DateTimeOffset acquiredAt)
    {
        var granted = new List<(Want Want, Lease Lease)>();
        lock (_gate)
        {
            foreach (var key in got)
            {
                var lease = new Lease(key, _generation, acquiredAt);
                _held[key] = lease;
                _holders.Remove(key);
                _staleHolders.Remove(key);
                _foundFree.Remove(key);
                if (fencing && !_neverFenced.Contains(key))
                {
                    // The runner gets the lease once its epoch is bumped.
                    _unfenced[key] = long.MinValue;
                }
                else if (_wants.Remove(key, out var want))
                {
                    granted.Add((want, lease));
                }
                else
                {
                    _ = AddRelease(lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)); // the runner gave up meanwhile
                }
            }
        }

        return granted;
    }

    /// <summary>
    /// Grants <paramref name="key"/> without an epoch bump even when fencing is on (<paramref name="on"/>), or as usual
    /// again: a rehearsal's private key (<see cref="Hosting.HighlanderNode.RehearseAsync"/>) must leave no row in the
    /// fencing table.
    /// </summary>
    public void SetNeverFenced(long key, bool on)
    {
        lock (_gate)
        {
            if (on)
            {
                _neverFenced.Add(key);
            }
            else
            {
                _neverFenced.Remove(key);
            }
        }
    }

    /// <summary>Records who holds <paramref name="keys"/> (those absent from <paramref name="holders"/> are held by nobody); returns the keys whose holder changed.</summary>
    public List<(long Key, LeaderInfo? Holder)> UpdateHolders(long[] keys, Dictionary<long, LeaderInfo> holders)
    {
        var changed = new List<(long Key, LeaderInfo? Holder)>();
        lock (_gate)
        {
            foreach (var key in keys)
            {
                _staleHolders.Remove(key);
                var before = _holders.GetValueOrDefault(key);
                if (holders.TryGetValue(key, out var holder))
                {
                    _holders[key] = holder;
                    _foundFree.Remove(key);
                }
                else
                {
                    _holders.Remove(key);
                    if (_wants.ContainsKey(key) && !_held.ContainsKey(key))
                    {
                        // Nobody holds it exclusively, yet the try failed: something held it for a moment, in shared mode
                        // (a follower's waiter, woken by the same release, holds it until its next statement). Nothing
                        // else would tell this node that it is free now: no holder to watch, no release to announce. So
                        // it is tried again at the next turn, and again after each holder query that still finds it
                        // free (spaced by FreeRetryDelay), rather than only at the next heartbeat.
                        _foundFree[key] = _foundFree.GetValueOrDefault(key) + 1;
                        _announced.Add(key);
                    }
                }

                var after = _holders.GetValueOrDefault(key);
                if (before?.BackendPid != after?.BackendPid || before?.ApplicationName != after?.ApplicationName)
                {
                    changed.Add((key, after));
                }
            }
        }

        return changed;
    }

    /// <summary>Held keys whose epoch bump is due at <paramref name="now"/>.</summary>
    public long[] UnfencedDue(long now)
    {
        lock (_gate)
        {
            return [.. _unfenced.Where(u => u.Value <= now).Select(u => u.Key)];
        }
    }

    /// <summary>When the next epoch bump is due, or <see cref="long.MaxValue"/> when none waits.</summary>
    public long NextUnfenced
    {
        get
        {
            lock (_gate)
            {
                return _unfenced.Count > 0 ? _unfenced.Values.Min() : long.MaxValue;
            }
        }
    }

    /// <summary>
    /// Picks one of the <paramref name="due"/> keys to bump, with its singleton's name. A due key whose runner gave up
    /// meanwhile is not bumped, only released.
    /// </summary>
    public (long Key, string Name)? TakeFenceCandidate(long[] due) => TakeFenceCandidates(due) is [var first, ..] ? first : null;

    /// <summary>
    /// The <paramref name="due"/> keys to bump, with their singletons' names (all of them: one batch after a take-over of
    /// many). A due key whose runner gave up meanwhile is not bumped, only released.
    /// </summary>
    public List<(long Key, string Name)> TakeFenceCandidates(long[] due)
    {
        lock (_gate)
        {
            foreach (var orphan in due.Where(k => !_wants.ContainsKey(k)))
            {
                _unfenced.Remove(orphan);
                if (_held.TryGetValue(orphan, out var lease))
                {
                    _ = AddRelease(lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
                }
            }

            return [.. due.Where(_wants.ContainsKey).Select(k => (k, _wants[k].Name))];
        }
    }

    /// <summary>The bump could not take the row yet (an old leader's guarded transaction holds it): retry at <paramref name="retryAt"/>.</summary>
    public void FenceDeferred(long key, long retryAt)
    {
        lock (_gate)
        {
            if (_unfenced.ContainsKey(key))
            {
                _unfenced[key] = retryAt;
            }
        }
    }

    /// <summary>The bump failed for good: the want is dropped (returned, for its runner to be told) and the lock released.</summary>
    public Want? FenceFailed(long key)
    {
        lock (_gate)
        {
            _unfenced.Remove(key);
            _wants.Remove(key, out var failed);
            if (_held.TryGetValue(key, out var lease))
            {
                _ = AddRelease(lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            }

            return failed;
        }
    }

    /// <summary>The key's epoch is bumped: its lease carries it and goes to its runner (returned), or is released when nobody wants it.</summary>
    public List<(Want Want, Lease Lease)> Fenced(long key, long epoch)
    {
        var granted = new List<(Want Want, Lease Lease)>();
        lock (_gate)
        {
            _unfenced.Remove(key);
            if (_held.TryGetValue(key, out var lease))
            {
                lease.Epoch = epoch;
                if (_wants.Remove(key, out var want))
                {
                    granted.Add((want, lease));
                }
                else
                {
                    _ = AddRelease(lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
                }
            }
        }

        return granted;
    }

    /// <summary>
    /// The session is gone, and every lock with it: forgets what was held, queued, in flight, unfenced and seen held by
    /// others (a holder seen through a lost session is not known to hold any more); completes the releases (the lock went
    /// with the session). Returns the leases that were held, for the caller to lose.
    /// </summary>
    public List<Lease> LoseAll()
    {
        lock (_gate)
        {
            List<Lease> lost = [.. _held.Values];
            _held.Clear();
            _covered.Clear();
            _unfenced.Clear();
            _holders.Clear();
            _staleHolders.Clear();
            _foundFree.Clear();
            _watched.Clear();
            foreach (var (_, done) in _releases.Concat(_inflightReleases))
            {
                done.TrySetResult();
            }

            _releases.Clear();
            _inflightReleases.Clear();
            _gathering = null;
            _wantsChanged = true;
            return lost;
        }
    }

    /// <summary>One runner's wish for one key, completed with the lease once the session holds it.</summary>
    internal sealed class Want(long key, string name)
    {
        public long Key { get; } = key;

        public string Name { get; } = name;

        public TaskCompletionSource<Lease> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public CancellationTokenRegistration Registration { get; set; }
    }
}
