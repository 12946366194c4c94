// Chyrak demo newsroom: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Collapse the section menu on small screens behind a button.
  var toggle = document.querySelector(".menu-toggle");
  var sections = document.getElementById("sections");
  if (toggle && sections) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      var open = sections.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  // "Copy link" without any social network widget.
  var copy = document.querySelector(".copy-link");
  if (copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      var url = new URL(copy.getAttribute("data-url"), window.location.href).href;
      navigator.clipboard.writeText(url).then(function () {
        copy.textContent = "\u2713";
      });
    });
  }

  var printLink = document.querySelector(".print-link");
  if (printLink) {
    printLink.addEventListener("click", function (event) {
      event.preventDefault();
      window.print();
    });
  }

  // Characters left in the comment box.
  var text = document.getElementById("comment");
  var counter = document.querySelector(".counter");
  if (text && counter) {
    var update = function () {
      var left = text.maxLength - text.value.length;
      counter.textContent = String(left);
    };
    text.addEventListener("input", update);
    update();
  }
})();
