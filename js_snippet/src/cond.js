// Trigger conditions (DESIGN.md §1): {variable, operator, value}; every condition of a trigger
// must hold. Values compare as strings, greater_than/less_than as numbers. `matches` compiles
// the value with RegExp (never eval). An invalid expression or an unknown operator throws,
// and the caller counts the trigger as not matching.

// get(id) -> the variable's current value as a string ("" when it has none).
export var test = (c, get, a, b, o) => (
  (a = get(c.variable)),
  (b = "" + c.value),
  (o = c.operator),
  o == "matches"
    ? RegExp(b).test(a)
    : o == "greater_than"
      ? +a > +b
      : o == "less_than"
        ? +a < +b
        : o == "equals"
          ? a == b
          : o == "not_equals"
            ? a != b
            : a[{ contains: "includes", starts_with: "startsWith", ends_with: "endsWith" }[o]](b)
);

export var all = (cs, get) => cs.every((c) => test(c, get));
