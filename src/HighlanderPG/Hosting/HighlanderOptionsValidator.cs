using HighlanderPG.Leasing;
using HighlanderPG.Supervision;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Hosting;

/// <summary>One thing wrong with the options: the options it concerns (by their property names) and what to fix.</summary>
/// <param name="Options">The <see cref="HighlanderOptions"/> or <see cref="ClusterSingletonOptions"/> property names involved.</param>
/// <param name="Message">The message, naming the options.</param>
internal sealed record OptionProblem(IReadOnlyList<string> Options, string Message);

/// <summary>Rejects options and singleton registrations that cannot be safe, with messages that name the options.</summary>
internal sealed class HighlanderOptionsValidator(IEnumerable<SingletonRegistration> registrations) : IValidateOptions<HighlanderOptions>
{
    internal const int MaxNameLength = 200;
    internal const int MaxNodeIdLength = 40;

    /// <summary>The longest delay an option may set (reconnect, restart): well inside what a timer can wait (49.7 days).</summary>
    internal static readonly TimeSpan MaxDelay = TimeSpan.FromDays(1);

    /// <summary>The longest restart window.</summary>
    internal static readonly TimeSpan MaxRestartWindow = TimeSpan.FromDays(30);

    /// <summary>
    /// Why a name or namespace could be written differently on another node and still look the same, or <see langword="null"/>:
    /// spaces at either end (a stray one in one node's configuration), a form other than Unicode's composed one (NFC: "é" as
    /// one character or as "e" and an accent), or half of a surrogate pair (which UTF-8 cannot encode). The key is the
    /// text's UTF-8 bytes, hashed: such a name would give another node a different lock, and the work would run twice.
    /// </summary>
    internal static string? AmbiguousText(string text)
    {
        if (text.Length > 0 && (char.IsWhiteSpace(text[0]) || char.IsWhiteSpace(text[^1])))
        {
            return "starts or ends with a space: remove it";
        }

        for (var i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(text[i]))
            {
                return "holds half of a surrogate pair (not valid Unicode text)";
            }
        }

        return text.IsNormalized(System.Text.NormalizationForm.FormC) ? null : "is not in Unicode's composed form (NFC): write it composed, e.g. with string.Normalize()";
    }

    public ValidateOptionsResult Validate(string? name, HighlanderOptions options)
    {
        var problems = Check(options, registrations);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems.Select(p => p.Message));
    }

    /// <summary>Everything wrong with <paramref name="options"/> and <paramref name="registrations"/>, as structured problems (the CLI maps them to its flags).</summary>
    internal static List<OptionProblem> Check(HighlanderOptions options, IEnumerable<SingletonRegistration> registrations)
    {
        var problems = new List<OptionProblem>();
        if (ConnectionSettings.Validate(options.ConnectionString) is { } connectionError)
        {
            Add(connectionError, nameof(HighlanderOptions.ConnectionString));
        }

        if (string.IsNullOrWhiteSpace(options.Namespace))
        {
            Add($"{nameof(HighlanderOptions.Namespace)} must not be empty.", nameof(HighlanderOptions.Namespace));
        }
        else if (options.Namespace.Length > MaxNameLength || options.Namespace.Any(char.IsControl))
        {
            Add($"{nameof(HighlanderOptions.Namespace)} must be 1 to {MaxNameLength} characters without control characters (like a singleton's name: the two make its lock key).", nameof(HighlanderOptions.Namespace));
        }
        else if (AmbiguousText(options.Namespace) is { } why)
        {
            Add($"{nameof(HighlanderOptions.Namespace)} '{Printable(options.Namespace)}' {why} (like a singleton's name: the two make its lock key, and every node must write them alike).", nameof(HighlanderOptions.Namespace));
        }

        if (string.IsNullOrEmpty(options.NodeId) || options.NodeId.Length > MaxNodeIdLength || options.NodeId.Any(c => c is <= ' ' or >= (char)127))
        {
            Add($"{nameof(HighlanderOptions.NodeId)} '{options.NodeId}' must be 1 to {MaxNodeIdLength} printable ASCII characters without spaces (it becomes part of the session's application_name, which PostgreSQL cuts at 63 bytes).", nameof(HighlanderOptions.NodeId));
        }

        // The lease, its inequality and the bounds derived from it: one place (LeaseTimings), not re-derived here.
        problems.AddRange(LeaseTimings.Check(options));
        Positive(options.ReconnectMinDelay, nameof(HighlanderOptions.ReconnectMinDelay));
        AtMost(options.ReconnectMinDelay, MaxDelay, "1 day", nameof(HighlanderOptions.ReconnectMinDelay));
        AtMost(options.ReconnectMaxDelay, MaxDelay, "1 day", nameof(HighlanderOptions.ReconnectMaxDelay));
        if (options.StepDownHoldOff < TimeSpan.Zero)
        {
            Add($"{nameof(HighlanderOptions.StepDownHoldOff)} must not be negative.", nameof(HighlanderOptions.StepDownHoldOff));
        }


        if (options.ReconnectMaxDelay < options.ReconnectMinDelay)
        {
            Add($"{nameof(HighlanderOptions.ReconnectMaxDelay)} ({options.ReconnectMaxDelay}) must not be less than {nameof(HighlanderOptions.ReconnectMinDelay)} ({options.ReconnectMinDelay}).", nameof(HighlanderOptions.ReconnectMaxDelay), nameof(HighlanderOptions.ReconnectMinDelay));
        }

        // Checked with fencing off too: the schema also names the control channel every node listens on (step-downs, drains).
        if (!Fencing.FencingSql.IsValidSchema(options.FencingSchema))
        {
            Add($"{nameof(HighlanderOptions.FencingSchema)} '{options.FencingSchema}' must be {Fencing.FencingSql.SchemaRule}.", nameof(HighlanderOptions.FencingSchema));
        }

        if (options.Endpoint is not null && !options.Fencing)
        {
            Add($"{nameof(HighlanderOptions.Endpoint)} needs {nameof(HighlanderOptions.Fencing)} = true: the endpoint is published in the fencing table, which exists only with fencing on. Turn fencing on, or remove the endpoint.", nameof(HighlanderOptions.Endpoint), nameof(HighlanderOptions.Fencing));
        }

        if (!Enum.IsDefined(options.Placement))
        {
            Add($"{nameof(HighlanderOptions.Placement)} {(int)options.Placement} is not a placement: use {nameof(SingletonPlacement.FirstComer)} or {nameof(SingletonPlacement.Spread)}.", nameof(HighlanderOptions.Placement));
        }

        ValidateSingleton(options.SingletonDefaults, "SingletonDefaults");
        var names = new HashSet<string>(StringComparer.Ordinal);
        var keys = new Dictionary<long, string>();
        foreach (var registration in registrations)
        {
            var singletonName = registration.Name;
            if (string.IsNullOrWhiteSpace(singletonName) || singletonName.Length > MaxNameLength || singletonName.Any(char.IsControl))
            {
                var registered = registration.ServiceType == typeof(DelegateSingleton) ? "" : $" ({registration.ServiceType.Name})";
                Add($"Cluster singleton name '{Printable(singletonName)}'{registered} must be 1 to {MaxNameLength} characters, not blank, without control characters (it has {singletonName?.Length ?? 0}).", "Name");
                continue;
            }

            if (AmbiguousText(singletonName) is { } ambiguous)
            {
                Add($"Cluster singleton name '{Printable(singletonName)}' {ambiguous} (the name makes the lock key, and every node must write it alike).", "Name");
                continue;
            }

            if (!names.Add(singletonName))
            {
                Add($"Cluster singleton name '{singletonName}' is registered more than once; give each AddClusterSingleton a distinct name.");
                continue;
            }

            var singleton = options.SingletonDefaults.CopyTo(new ClusterSingletonOptions());
            registration.Configure?.Invoke(singleton);
            ValidateSingleton(singleton, $"Cluster singleton '{singletonName}'");
            var key = singleton.Key ?? (string.IsNullOrWhiteSpace(options.Namespace) ? 0 : SingletonKey.Derive(options.Namespace, singletonName));
            if (keys.TryGetValue(key, out var other))
            {
                Add($"Cluster singletons '{other}' and '{singletonName}' have the same lock key {key}; give them distinct {nameof(ClusterSingletonOptions.Key)}s.", nameof(ClusterSingletonOptions.Key));
            }
            else
            {
                keys[key] = singletonName;
            }
        }

        return problems;

        void Add(string message, params string[] involved) => problems.Add(new OptionProblem(involved, message));

        // A refused name as it can be shown: control characters escaped, and cut short (it may be very long).
        static string Printable(string? value)
        {
            var escaped = string.Concat((value ?? "").Take(60).Select(c => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString()));
            return (value?.Length ?? 0) > 60 ? escaped + "…" : escaped;
        }

        void AtMost(TimeSpan value, TimeSpan max, string spelled, string option)
        {
            if (value > max)
            {
                Add($"{option} is {value}; it must be at most {spelled}.", option);
            }
        }

        void Positive(TimeSpan value, string option)
        {
            if (value <= TimeSpan.Zero)
            {
                Add($"{option} must be positive (it is {value}).", option);
            }
        }

        void ValidateSingleton(ClusterSingletonOptions singleton, string what)
        {
            if (singleton.MaxRestarts < 0)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.MaxRestarts)} must not be negative.", nameof(ClusterSingletonOptions.MaxRestarts));
            }

            if (singleton.RestartWindow <= TimeSpan.Zero || singleton.RestartWindow > MaxRestartWindow)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.RestartWindow)} must be positive and at most 30 days (it is {singleton.RestartWindow}).", nameof(ClusterSingletonOptions.RestartWindow));
            }

            if (singleton.RestartDelay < TimeSpan.Zero || singleton.RestartDelay > MaxDelay)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.RestartDelay)} must be between 0 and 1 day (it is {singleton.RestartDelay}).", nameof(ClusterSingletonOptions.RestartDelay));
            }

            if (!Enum.IsDefined(singleton.RestartPolicy))
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.RestartPolicy)} {(int)singleton.RestartPolicy} is not a restart policy: use {nameof(RestartPolicy.Always)}, {nameof(RestartPolicy.OnFailure)} or {nameof(RestartPolicy.Never)}.", nameof(ClusterSingletonOptions.RestartPolicy));
            }

            if (!Enum.IsDefined(singleton.CrashLoopBehavior))
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.CrashLoopBehavior)} {(int)singleton.CrashLoopBehavior} is not a crash-loop behaviour: use one of {string.Join(", ", Enum.GetNames<CrashLoopBehavior>())}.", nameof(ClusterSingletonOptions.CrashLoopBehavior));
            }

            foreach (var pattern in singleton.PreferredNodes)
            {
                if (Placement.NodePattern.Problem(pattern, MaxNodeIdLength) is { } patternProblem)
                {
                    Add($"{what}: {nameof(ClusterSingletonOptions.PreferredNodes)}: {patternProblem}.", nameof(ClusterSingletonOptions.PreferredNodes));
                }
            }

            if (singleton.PreferredNodes.Count > 0 && options.Placement != SingletonPlacement.Spread)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.PreferredNodes)} needs {nameof(HighlanderOptions.Placement)} = {nameof(SingletonPlacement.Spread)} (under {options.Placement} the first node to try takes every singleton).", nameof(ClusterSingletonOptions.PreferredNodes), nameof(HighlanderOptions.Placement));
            }
        }
    }
}
