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

        if (string.IsNullOrEmpty(options.NodeId) || options.NodeId.Length > MaxNodeIdLength || options.NodeId.Any(c => c is <= ' ' or >= (char)127))
        {
            Add($"{nameof(HighlanderOptions.NodeId)} '{options.NodeId}' must be 1 to {MaxNodeIdLength} printable ASCII characters without spaces (it becomes part of the session's application_name, which PostgreSQL cuts at 63 bytes).", nameof(HighlanderOptions.NodeId));
        }

        // The lease, its inequality and the bounds derived from it: one place (LeaseTimings), not re-derived here.
        problems.AddRange(LeaseTimings.Check(options));
        Positive(options.ReconnectMinDelay, nameof(HighlanderOptions.ReconnectMinDelay));
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
            Add($"{nameof(HighlanderOptions.FencingSchema)} '{options.FencingSchema}' must be a lowercase SQL identifier (letters, digits, underscores; at most 63).", nameof(HighlanderOptions.FencingSchema));
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

            if (singleton.RestartWindow <= TimeSpan.Zero)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.RestartWindow)} must be positive.", nameof(ClusterSingletonOptions.RestartWindow));
            }

            if (singleton.RestartDelay < TimeSpan.Zero)
            {
                Add($"{what}: {nameof(ClusterSingletonOptions.RestartDelay)} must not be negative.", nameof(ClusterSingletonOptions.RestartDelay));
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
