// Röstwerk, the tagwerk demo shop: a single-page app (history.pushState routing) instrumented
// the way a Google Tag Manager shop is: GA4 e-commerce events pushed to window.dataLayer
// (each preceded by {ecommerce: null}), tagwerk('identify', customerId, {identity_token})
// at sign-in (the token from the demo's stand-in for a shop server,
// /demo/api/identity-token), and a
// "Cookie settings" link that calls tagwerk('consent', 'show'). The tag itself is loaded by
// the page's snippet (collector/tag/demo.py); the only requests this script makes are for the
// "Recommended for you" and "Customers also viewed" blocks, from the collector's
// browser-safe lists under /t/demo/recommend/ (no key; what this visitor bought, on any
// of their devices or in the store, is left out when they consented to personalization).
//
// Works under the page's strict CSP: no inline handlers, no style attributes, no eval.
// Shop state (cart, orders, the signed-in customer) is the shop's own, in localStorage.
"use strict";
(() => {
  const BASE = "/demo";
  const CURRENCY = "EUR";
  const money = new Intl.NumberFormat("en-IE", { style: "currency", currency: CURRENCY });
  const eur = (cents) => money.format(cents / 100);
  const esc = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  // -- the catalogue ----------------------------------------------------------------------

  const CATEGORIES = {
    coffee: { name: "Coffee", blurb: "Small-lot beans, roasted every Tuesday in Leipzig." },
    brewing: { name: "Brewing", blurb: "Everything for a better cup at home." },
    cups: { name: "Cups", blurb: "Stoneware made for the way you drink coffee." },
  };
  const PRODUCTS = [
    { id: "RW-101", slug: "yirgacheffe", name: "Yirgacheffe Kochere", category: "coffee", variant: "250 g, whole bean",
      cents: 1290, art: "bag", color: "#e0a93b", note: "Bergamot, peach, jasmine",
      text: "A washed Ethiopian coffee from the Kochere district: floral and bright, lovely as a pour-over." },
    { id: "RW-102", slug: "casa-espresso", name: "Casa Espresso Blend", category: "coffee", variant: "250 g, whole bean",
      cents: 1150, art: "bag", color: "#8c3b2e", note: "Dark chocolate, hazelnut",
      text: "Brazil and Guatemala, roasted a touch darker for a round espresso that loves milk." },
    { id: "RW-103", slug: "huila-decaf", name: "Huila Decaf", category: "coffee", variant: "250 g, whole bean",
      cents: 1340, art: "bag", color: "#4d7c8a", note: "Caramel, red apple",
      text: "Sugar-cane decaffeinated Colombian coffee that still tastes like coffee. Evenings sorted." },
    { id: "RW-201", slug: "pour-over-dripper", name: "Ceramic Pour-Over Dripper", category: "brewing", variant: "Size 02, white",
      cents: 2400, art: "dripper", color: "#efe7dc", note: "For 1 to 4 cups",
      text: "Glazed porcelain that holds its heat, with spiral ribs for an even extraction." },
    { id: "RW-202", slug: "gooseneck-kettle", name: "Gooseneck Kettle", category: "brewing", variant: "1 l, matte black",
      cents: 5900, art: "kettle", color: "#2f2f33", note: "Works on induction",
      text: "A slow, precise pour from a spout made for it. Stainless steel, built-in thermometer." },
    { id: "RW-203", slug: "hand-grinder", name: "Hand Burr Grinder", category: "brewing", variant: "Steel burrs",
      cents: 8900, art: "grinder", color: "#b9b2a6", note: "40 grind settings",
      text: "Conical steel burrs and a sturdy crank: espresso-fine to French-press coarse." },
    { id: "RW-301", slug: "stoneware-mug", name: "Stoneware Mug", category: "cups", variant: "300 ml, sand",
      cents: 1600, art: "mug", color: "#d8c3a5", note: "Dishwasher safe",
      text: "Thrown by hand in Saxony, with a handle that fits more than two fingers." },
    { id: "RW-302", slug: "espresso-cups", name: "Espresso Cup Pair", category: "cups", variant: "2 x 80 ml, charcoal",
      cents: 2200, art: "cup", color: "#4a4540", note: "With saucers",
      text: "Thick walls keep the crema warm. Two cups, two saucers, one small ritual." },
  ];
  const bySlug = (s) => PRODUCTS.find((p) => p.slug == s);
  const byId = (i) => PRODUCTS.find((p) => p.id == i);
  const FEATURED = ["yirgacheffe", "gooseneck-kettle", "stoneware-mug", "casa-espresso"].map(bySlug);
  const COUPONS = { WELCOME10: 10 }; // percent off the items
  const FREE_SHIPPING = 4000;
  const SHIPPING = 490;

  // Product pictures: inline SVG drawn from a few shapes (no external assets).
  const ART = {
    bag: (c) =>
      `<path d="M70 38h60l8 14v78a6 6 0 0 1-6 6H68a6 6 0 0 1-6-6V52z" fill="#c9a27a"/>
       <path d="M70 38h60l-4 10H74z" fill="#a8825c"/>
       <rect x="74" y="70" width="52" height="40" rx="4" fill="${c}"/>
       <ellipse cx="100" cy="90" rx="9" ry="13" fill="#3b2416"/>
       <path d="M100 78c-4 8-4 16 0 24" stroke="${c}" stroke-width="2.5" fill="none"/>`,
    dripper: (c) =>
      `<path d="M56 48h88l-26 52H82z" fill="${c}" stroke="#cbbfae" stroke-width="2"/>
       <path d="M78 58l10 36M100 58v36M122 58l-10 36" stroke="#d9cfc1" stroke-width="2"/>
       <rect x="70" y="100" width="60" height="8" rx="3" fill="#d9cfc1"/>
       <path d="M74 112h52l-6 22H80z" fill="#8fb8c9" opacity=".55"/>
       <path d="M100 109v8" stroke="#3b2416" stroke-width="3" stroke-linecap="round"/>`,
    kettle: (c) =>
      `<path d="M62 74c0-14 14-22 38-22s38 8 38 22v44a10 10 0 0 1-10 10H72a10 10 0 0 1-10-10z" fill="${c}"/>
       <path d="M62 92c-22-2-26-30-40-44" stroke="${c}" stroke-width="7" fill="none" stroke-linecap="round"/>
       <path d="M138 80c16 0 18 30 0 34" stroke="#55555c" stroke-width="7" fill="none"/>
       <rect x="90" y="42" width="20" height="10" rx="4" fill="#55555c"/>
       <circle cx="100" cy="96" r="9" fill="#e7e1d8"/><path d="M100 96l4-5" stroke="${c}" stroke-width="2"/>`,
    grinder: (c) =>
      `<rect x="78" y="56" width="44" height="76" rx="8" fill="${c}"/>
       <rect x="78" y="74" width="44" height="6" fill="#8f887c"/>
       <path d="M100 56V40h40" stroke="#3b2416" stroke-width="5" fill="none" stroke-linecap="round"/>
       <circle cx="144" cy="40" r="8" fill="#6b4a33"/>
       <rect x="84" y="96" width="32" height="26" rx="4" fill="#a39b8f"/>`,
    mug: (c) =>
      `<path d="M64 56h62v56a16 16 0 0 1-16 16H80a16 16 0 0 1-16-16z" fill="${c}"/>
       <path d="M126 70h8a14 14 0 0 1 0 28h-8" stroke="${c}" stroke-width="8" fill="none"/>
       <ellipse cx="95" cy="56" rx="31" ry="6" fill="#6b4a33"/>
       <path d="M84 44c-4-6 4-10 0-16M98 44c-4-6 4-10 0-16M112 44c-4-6 4-10 0-16" stroke="#bfae98"
         stroke-width="3" fill="none" stroke-linecap="round"/>`,
    cup: (c) =>
      `<ellipse cx="78" cy="118" rx="34" ry="7" fill="#d9cfc1"/><ellipse cx="132" cy="118" rx="34" ry="7" fill="#d9cfc1"/>
       <path d="M56 78h44v22a14 14 0 0 1-14 14H70a14 14 0 0 1-14-14z" fill="${c}"/>
       <path d="M110 78h44v22a14 14 0 0 1-14 14h-16a14 14 0 0 1-14-14z" fill="${c}"/>
       <ellipse cx="78" cy="78" rx="22" ry="4" fill="#6b4a33"/><ellipse cx="132" cy="78" rx="22" ry="4" fill="#6b4a33"/>`,
  };
  const picture = (p, cls) =>
    `<svg class="${cls}" viewBox="0 0 200 160" role="img" aria-label="${esc(p.name)}">
       <rect width="200" height="160" rx="14" class="pic-bg pic-${p.category}"/>${ART[p.art](p.color)}</svg>`;

  // -- shop state (the shop's own, in localStorage) ----------------------------------------

  const load = (k, d) => {
    try {
      return JSON.parse(localStorage.getItem(k)) || d;
    } catch (e) {
      return d;
    }
  };
  const store = (k, v) => {
    try {
      v == null ? localStorage.removeItem(k) : localStorage.setItem(k, JSON.stringify(v));
    } catch (e) {}
  };
  const cart = () => load("shop_cart", []).filter((l) => byId(l.id) && l.qty > 0);
  const saveCart = (c) => {
    store("shop_cart", c);
    badge();
  };
  const customer = () => load("shop_customer", null);
  const orders = () => load("shop_orders", []);

  const totals = (lines, coupon) => {
    const subtotal = lines.reduce((s, l) => s + byId(l.id).cents * l.qty, 0);
    const pct = COUPONS[coupon] || 0;
    const discount = Math.round((subtotal * pct) / 100);
    const shipping = subtotal - discount >= FREE_SHIPPING || !subtotal ? 0 : SHIPPING;
    return { subtotal, discount, shipping, value: subtotal - discount, total: subtotal - discount + shipping };
  };

  // A stable customer id for an e-mail address (the demo's fake login): two FNV-1a hashes of
  // the normalised address. The id is what goes to analytics, never the address.
  const customerId = (email) => {
    const h = (seed) => {
      let x = seed >>> 0;
      for (const ch of email.trim().toLowerCase()) {
        x ^= ch.codePointAt(0);
        x = Math.imul(x, 16777619) >>> 0;
      }
      return x.toString(16).padStart(8, "0");
    };
    return "C-" + (h(2166136261) + h(374761393)).slice(0, 12).toUpperCase();
  };

  // -- the data layer (GA4 e-commerce, as a GTM shop pushes it) ----------------------------

  const dataLayer = (window.dataLayer = window.dataLayer || []);
  const item = (p, extra) => ({
    item_id: p.id,
    item_name: p.name,
    item_brand: "Röstwerk",
    item_category: CATEGORIES[p.category].name,
    item_variant: p.variant,
    price: p.cents / 100,
    ...extra,
  });
  const ecommerce = (event, data) => {
    dataLayer.push({ ecommerce: null }); // clear the previous ecommerce object (GTM docs)
    dataLayer.push({ event, ecommerce: data });
  };
  const lineItems = (lines) => lines.map((l, i) => item(byId(l.id), { quantity: l.qty, index: i }));
  const listed = (list, name, products) =>
    ecommerce("view_item_list", {
      item_list_id: list,
      item_list_name: name,
      items: products.map((p, i) => item(p, { index: i, item_list_id: list, item_list_name: name })),
    });

  // -- views ------------------------------------------------------------------------------
  // Each view is {title, html, after}: building it has no side effects (the page title is set
  // before pushState, so the tag's page view carries the new title); after() binds the
  // view's controls and pushes its data layer events once it is on screen.

  const card = (p, list, listName, i) =>
    `<li class="card">
       <a href="${BASE}/product/${p.slug}" data-nav data-select="${p.id}" data-list="${list}"
          data-list-name="${esc(listName)}" data-index="${i}">
         ${picture(p, "pic")}
         <span class="card-body"><span class="card-name">${esc(p.name)}</span>
           <span class="card-note">${esc(p.note)}</span>
           <span class="price">${eur(p.cents)}</span></span>
       </a></li>`;
  const grid = (products, list, listName) =>
    `<ul class="grid">${products.map((p, i) => card(p, list, listName, i)).join("")}</ul>`;

  // A block of recommended products, filled in when the list arrives; it stays hidden when
  // the list is empty or the request fails (a shop page never waits for it).
  const RECOMMEND = "/t/demo/recommend";
  // Sign-in: the shop's server signs the customer id (identity_token), so that the
  // collector links this device to the customer; a page alone could claim anyone's id.
  const identify = async (id) => {
    let signed = {};
    try {
      const response = await fetch(`${BASE}/api/identity-token?user_id=${encodeURIComponent(id)}`);
      if (response.ok) signed = await response.json();
    } catch (e) {
      // offline: the identify is still sent, as a plain event that links nothing
    }
    window.tagwerk("identify", id, signed);
  };

  const recommended = (id, title) =>
    `<section class="recs" id="${id}" hidden><h2 class="section-title">${title}</h2><div></div></section>`;
  const fillRecommended = async (id, path, title, leaveOut = []) => {
    const section = document.getElementById(id);
    try {
      const response = await fetch(RECOMMEND + path, { credentials: "same-origin" });
      if (!response.ok) return;
      const { items } = await response.json();
      const products = items
        .map((i) => byId(i.product_id))
        .filter((p) => p && !leaveOut.includes(p.id))
        .slice(0, 4);
      if (!products.length || !section.isConnected) return;
      section.querySelector("div").innerHTML = grid(products, id, title);
      section.hidden = false; // (no view_item_list: it comes and goes with the data)
    } catch (e) {
      // offline or blocked: the page works without it
    }
  };

  const home = () => ({
    title: "Röstwerk · Specialty coffee and brewing gear",
    html: `<section class="hero">
        <div class="hero-text">
          <p class="eyebrow">Fresh this week</p>
          <h1>Coffee worth getting up for.</h1>
          <p>Small-lot beans roasted every Tuesday, and the gear to brew them well.
             Free shipping from ${eur(FREE_SHIPPING)}.</p>
          <p class="hero-cta"><a class="btn" href="${BASE}/category/coffee" data-nav>Shop coffee</a>
             <a class="btn btn-quiet" href="${BASE}/category/brewing" data-nav>Brewing gear</a></p>
        </div>
        ${picture(bySlug("yirgacheffe"), "hero-pic")}
      </section>
      <h2 class="section-title">Our favourites</h2>
      ${grid(FEATURED, "featured", "Our favourites")}
      ${recommended("for-you", "Recommended for you")}
      <section class="cats" aria-label="Categories">
        ${Object.entries(CATEGORIES)
          .map(([id, c]) => `<a class="cat" href="${BASE}/category/${id}" data-nav><b>${c.name}</b><span>${c.blurb}</span></a>`)
          .join("")}
      </section>`,
    after: () => {
      listed("featured", "Our favourites", FEATURED);
      fillRecommended("for-you", "/top?metric=views&window=7d&limit=12", "Recommended for you");
    },
  });

  const category = (id) => {
    const c = CATEGORIES[id];
    if (!c) return notFound();
    const products = PRODUCTS.filter((p) => p.category == id);
    return {
      title: `${c.name} · Röstwerk`,
      html: `<nav class="crumbs" aria-label="Breadcrumb"><a href="${BASE}/" data-nav>Home</a> / ${c.name}</nav>
        <h1>${c.name}</h1><p class="lead">${c.blurb}</p>${grid(products, id, c.name)}`,
      after: () => listed(id, c.name, products),
    };
  };

  const product = (slug) => {
    const p = bySlug(slug);
    if (!p) return notFound();
    const c = CATEGORIES[p.category];
    return {
      title: `${p.name} · Röstwerk`,
      html: `<nav class="crumbs" aria-label="Breadcrumb"><a href="${BASE}/" data-nav>Home</a> /
          <a href="${BASE}/category/${p.category}" data-nav>${c.name}</a> / ${esc(p.name)}</nav>
        <article class="product" data-sku="${p.id}">
          ${picture(p, "product-pic")}
          <div class="product-info">
            <h1>${esc(p.name)}</h1>
            <p class="variant">${esc(p.variant)} · ${esc(p.note)}</p>
            <p class="price big">${eur(p.cents)}</p>
            <p>${esc(p.text)}</p>
            <form class="buy" id="buy-form">
              <label for="qty">Quantity</label>
              <div class="stepper">
                <button type="button" class="step" data-step="-1" aria-label="One less">−</button>
                <input id="qty" name="qty" type="number" min="1" max="20" value="1" inputmode="numeric">
                <button type="button" class="step" data-step="1" aria-label="One more">+</button>
              </div>
              <button type="submit" class="btn" id="add-to-cart">Add to cart</button>
            </form>
            <p class="small">Ships in 1–2 working days · 30-day returns</p>
          </div>
        </article>
        ${recommended("also-viewed", "Customers also viewed")}`,
      after: () => {
        const qty = document.getElementById("qty");
        document.querySelectorAll(".step").forEach((b) =>
          b.addEventListener("click", () => {
            qty.value = Math.min(20, Math.max(1, (parseInt(qty.value, 10) || 1) + +b.dataset.step));
          })
        );
        document.getElementById("buy-form").addEventListener("submit", (e) => {
          e.preventDefault();
          const n = Math.min(20, Math.max(1, parseInt(qty.value, 10) || 1));
          addToCart(p, n);
        });
        ecommerce("view_item", { currency: CURRENCY, value: p.cents / 100, items: [item(p)] });
        fillRecommended("also-viewed", `/related/${encodeURIComponent(p.id)}?kind=co_view&limit=12`,
          "Customers also viewed", [p.id]);
      },
    };
  };

  const addToCart = (p, n) => {
    const lines = cart();
    const line = lines.find((l) => l.id == p.id);
    line ? (line.qty += n) : lines.push({ id: p.id, qty: n });
    saveCart(lines);
    ecommerce("add_to_cart", { currency: CURRENCY, value: (p.cents * n) / 100, items: [item(p, { quantity: n })] });
    toast(`${n} × ${p.name} added to your cart.`, `${BASE}/cart`, "View cart");
  };

  const removeFromCart = (id, n) => {
    const p = byId(id);
    const lines = cart();
    const line = lines.find((l) => l.id == id);
    if (!line) return;
    n = Math.min(n, line.qty);
    line.qty -= n;
    saveCart(lines.filter((l) => l.qty > 0));
    ecommerce("remove_from_cart", { currency: CURRENCY, value: (p.cents * n) / 100, items: [item(p, { quantity: n })] });
  };

  const summary = (t, coupon) =>
    `<dl class="sum">
       <dt>Items</dt><dd>${eur(t.subtotal)}</dd>
       ${t.discount ? `<dt>Coupon ${esc(coupon)}</dt><dd>−${eur(t.discount)}</dd>` : ""}
       <dt>Shipping</dt><dd>${t.shipping ? eur(t.shipping) : "free"}</dd>
       <dt class="total">Total</dt><dd class="total" id="order-total">${eur(t.total)}</dd>
     </dl>`;

  const cartView = () => {
    const lines = cart();
    if (!lines.length)
      return {
        title: "Your cart · Röstwerk",
        html: `<h1>Your cart</h1><p class="empty">Your cart is empty.</p>
          <p><a class="btn" href="${BASE}/category/coffee" data-nav>Find a coffee</a></p>`,
      };
    return {
      title: "Your cart · Röstwerk",
      html: `<h1>Your cart</h1>
        <ul class="lines">${lines
          .map((l) => {
            const p = byId(l.id);
            return `<li class="line" data-line="${p.id}">
              ${picture(p, "line-pic")}
              <div class="line-main"><a href="${BASE}/product/${p.slug}" data-nav>${esc(p.name)}</a>
                <span class="small">${esc(p.variant)} · ${eur(p.cents)}</span></div>
              <div class="stepper small-stepper">
                <button type="button" data-less="${p.id}" aria-label="One less ${esc(p.name)}">−</button>
                <output aria-label="Quantity">${l.qty}</output>
                <button type="button" data-more="${p.id}" aria-label="One more ${esc(p.name)}">+</button>
              </div>
              <span class="line-total">${eur(p.cents * l.qty)}</span>
              <button type="button" class="linkish" data-remove="${p.id}">Remove</button>
            </li>`;
          })
          .join("")}</ul>
        <div class="cart-foot">${summary(totals(lines))}
          <a class="btn" href="${BASE}/checkout" data-nav id="to-checkout">Checkout</a></div>`,
      after: () => {
        const again = () => paint(cartView());
        document.querySelectorAll("[data-less]").forEach((b) =>
          b.addEventListener("click", () => (removeFromCart(b.dataset.less, 1), again()))
        );
        document.querySelectorAll("[data-more]").forEach((b) =>
          b.addEventListener("click", () => (addToCart(byId(b.dataset.more), 1), again()))
        );
        document.querySelectorAll("[data-remove]").forEach((b) =>
          b.addEventListener("click", () => (removeFromCart(b.dataset.remove, Infinity), again()))
        );
      },
    };
  };

  const checkout = () => {
    const lines = cart();
    if (!lines.length) return cartView();
    const me = customer();
    return {
      title: "Checkout · Röstwerk",
      html: `<h1>Checkout</h1>
        <form class="checkout" id="checkout-form">
          <fieldset><legend>Delivery</legend>
            <label>Name <input name="name" autocomplete="name" required value="Alex Example"></label>
            <label>E-mail <input name="email" type="email" autocomplete="email" required
              value="${esc(me ? me.email : "alex@example.com")}"></label>
            <label>Street <input name="street" autocomplete="street-address" required value="Karl-Liebknecht-Str. 1"></label>
            <label>Postcode and city <input name="city" autocomplete="address-level2" required value="04107 Leipzig"></label>
          </fieldset>
          <fieldset><legend>Coupon</legend>
            <div class="row"><input name="coupon" id="coupon" aria-label="Coupon code" placeholder="Try WELCOME10">
              <button type="button" class="btn btn-quiet" id="apply-coupon">Apply</button></div>
            <p class="small" id="coupon-note" role="status"></p>
          </fieldset>
          <fieldset><legend>Payment</legend>
            <p class="small">Demo payment: nothing is charged.</p>
          </fieldset>
          <div id="checkout-sum">${summary(totals(lines))}</div>
          <button type="submit" class="btn big-btn" id="place-order">Place order</button>
        </form>`,
      after: () => {
        let coupon = "";
        const input = document.getElementById("coupon");
        const note = document.getElementById("coupon-note");
        document.getElementById("apply-coupon").addEventListener("click", () => {
          const code = input.value.trim().toUpperCase();
          coupon = COUPONS[code] ? code : "";
          note.textContent = coupon ? `${code}: ${COUPONS[code]} % off the items.` : code ? "Unknown coupon." : "";
          document.getElementById("checkout-sum").innerHTML = summary(totals(lines, coupon), coupon);
        });
        document.getElementById("checkout-form").addEventListener("submit", (e) => {
          e.preventDefault();
          placeOrder(lines, coupon);
        });
        const t = totals(lines);
        ecommerce("begin_checkout", { currency: CURRENCY, value: t.value / 100, items: lineItems(lines) });
      },
    };
  };

  const placeOrder = (lines, coupon) => {
    const id = "RW-" + Date.now().toString(36).toUpperCase() + "-" + Math.random().toString(36).slice(2, 6).toUpperCase();
    const t = totals(lines, coupon);
    const order = { id, lines, coupon, totals: t, at: new Date().toISOString(), reported: false };
    store("shop_orders", [order, ...orders()].slice(0, 20));
    saveCart([]);
    navigate(`${BASE}/order/${id}`);
  };

  const orderView = (id) => {
    const all = orders();
    const o = all.find((x) => x.id == id);
    if (!o) return notFound();
    return {
      title: "Thank you · Röstwerk",
      html: `<section class="thanks"><h1>Thank you!</h1>
        <p>Your order <strong id="order-id">${esc(o.id)}</strong> is confirmed.
           A confirmation would now be on its way (this is a demo: nothing ships).</p>
        <ul class="lines">${o.lines
          .map((l) => `<li class="line"><span class="line-main">${l.qty} × ${esc(byId(l.id).name)}</span>
             <span class="line-total">${eur(byId(l.id).cents * l.qty)}</span></li>`)
          .join("")}</ul>
        ${summary(o.totals, o.coupon)}
        <p><a class="btn" href="${BASE}/" data-nav>Continue shopping</a></p></section>`,
      // The purchase is reported once, on the confirmation page (not again on a reload).
      after: () => {
        if (o.reported) return;
        o.reported = true;
        store("shop_orders", all);
        ecommerce("purchase", {
          transaction_id: o.id,
          value: o.totals.value / 100,
          shipping: o.totals.shipping / 100,
          currency: CURRENCY,
          coupon: o.coupon || undefined,
          items: lineItems(o.lines),
        });
      },
    };
  };

  const login = () => {
    const me = customer();
    if (me) return account();
    return {
      title: "Sign in · Röstwerk",
      html: `<section class="narrow"><h1>Sign in</h1>
        <p class="lead">Demo login: any e-mail address and password work. The same address is
          always the same customer, on every device.</p>
        <form id="login-form" class="stack">
          <label>E-mail <input name="email" id="login-email" type="email" autocomplete="email" required></label>
          <label>Password <input name="password" id="login-password" type="password" autocomplete="current-password" required></label>
          <button type="submit" class="btn" id="login-submit">Sign in</button>
        </form></section>`,
      after: () =>
        document.getElementById("login-form").addEventListener("submit", async (e) => {
          e.preventDefault();
          const email = document.getElementById("login-email").value.trim();
          const id = customerId(email);
          store("shop_customer", { id, email });
          await identify(id);
          who();
          navigate(`${BASE}/account`);
        }),
    };
  };

  const account = () => {
    const me = customer();
    if (!me) return login();
    const mine = orders();
    return {
      title: "Your account · Röstwerk",
      html: `<section class="narrow"><h1>Your account</h1>
        <p>Signed in as <strong>${esc(me.email)}</strong>, customer number
          <code id="customer-id">${esc(me.id)}</code>.</p>
        <h2>Orders</h2>
        ${mine.length ? `<ul class="orders">${mine
          .map((o) => `<li><a href="${BASE}/order/${esc(o.id)}" data-nav>${esc(o.id)}</a> · ${eur(o.totals.total)}</li>`)
          .join("")}</ul>` : `<p class="empty">No orders yet.</p>`}
        <p><button type="button" class="btn btn-quiet" id="sign-out">Sign out</button></p></section>`,
      after: () =>
        document.getElementById("sign-out").addEventListener("click", () => {
          store("shop_customer", null);
          window.tagwerk("reset"); // the next person on this device is someone else
          who();
          navigate(`${BASE}/`);
        }),
    };
  };

  const notFound = () => ({
    title: "Not found · Röstwerk",
    html: `<h1>Page not found</h1><p>That page does not exist (any more).</p>
      <p><a class="btn" href="${BASE}/" data-nav>Back to the shop</a></p>`,
  });

  const ROUTES = [
    [/^\/demo\/?$/, home],
    [/^\/demo\/category\/([a-z]+)\/?$/, category],
    [/^\/demo\/product\/([a-z0-9-]+)\/?$/, product],
    [/^\/demo\/cart\/?$/, cartView],
    [/^\/demo\/checkout\/?$/, checkout],
    [/^\/demo\/order\/([A-Za-z0-9-]+)\/?$/, orderView],
    [/^\/demo\/login\/?$/, login],
    [/^\/demo\/account\/?$/, account],
  ];
  const resolve = (path) => {
    for (const [re, view] of ROUTES) {
      const m = re.exec(path);
      if (m) return view(...m.slice(1));
    }
    return notFound();
  };

  // -- rendering and routing --------------------------------------------------------------

  const main = document.getElementById("main");
  const paint = (v) => {
    document.title = v.title;
    main.innerHTML = v.html;
    main.querySelector("h1")?.setAttribute("tabindex", "-1");
    v.after && v.after();
  };

  // A route change: the title first, then pushState (the tag's page view reads both), then
  // the view and its data layer events.
  const navigate = (url) => {
    const u = new URL(url, location.href);
    const v = resolve(u.pathname);
    document.title = v.title;
    history.pushState({}, "", u.pathname + u.search + u.hash);
    paint(v);
    scrollTo(0, 0);
    main.querySelector("h1")?.focus({ preventScroll: true });
  };

  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[data-nav]");
    if (!a || e.defaultPrevented || e.button || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (a.origin != location.origin || !a.pathname.startsWith(BASE + "/") || a.search.includes("tagwerk_debug")) return;
    e.preventDefault();
    if (a.dataset.select) {
      const p = byId(a.dataset.select);
      ecommerce("select_item", {
        item_list_id: a.dataset.list,
        item_list_name: a.dataset.listName,
        items: [item(p, { index: +a.dataset.index, item_list_id: a.dataset.list, item_list_name: a.dataset.listName })],
      });
    }
    if (a.href != location.href) navigate(a.href);
  });
  addEventListener("popstate", () => paint(resolve(location.pathname)));

  // -- header, footer, toast --------------------------------------------------------------

  const badge = () => {
    const n = cart().reduce((s, l) => s + l.qty, 0);
    const b = document.getElementById("cart-count");
    b.textContent = n;
    b.classList.toggle("zero", !n);
  };
  const who = () => {
    const me = customer();
    const a = document.getElementById("account-link");
    a.textContent = me ? "Account" : "Sign in";
    a.setAttribute("href", `${BASE}/${me ? "account" : "login"}`);
  };
  let toastTimer;
  const toast = (text, href, label) => {
    let t = document.getElementById("toast");
    if (!t) {
      t = document.createElement("div");
      t.id = "toast";
      t.className = "toast";
      t.setAttribute("role", "status");
      document.body.append(t);
    }
    t.innerHTML = `<span>${esc(text)}</span> <a href="${href}" data-nav>${esc(label)}</a>`;
    t.classList.add("on");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.remove("on"), 4000);
  };

  document.getElementById("cookie-settings").addEventListener("click", () => window.tagwerk("consent", "show"));

  // -- start ------------------------------------------------------------------------------

  badge();
  who();
  const me = customer();
  if (me) identify(me.id); // signed in on an earlier visit
  paint(resolve(location.pathname));
})();
